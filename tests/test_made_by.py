"""Which version made what (issue 25 item 7): a handler declares its version and the configuration that matters;
the claim that opens a generation records them (its audit row's detail, no schema change); history, the store's
queries and the export show them; ``reprocess --version-not V`` selects the runs whose results another version
made. On SQLite and PostgreSQL, through the real command line, with real jobs on the local backend."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import pytest
from cli_support import as_json, invoke, ok
from handler_support import Probe, make_campaign, settle, write_payload

from ecalstate import Store
from ecalstate.backends.local import LocalBackend
from ecalstate.errors import EcalStateError
from ecalstate.results import MadeBy


class Release20(Probe):
    version = "2.0"
    config = {"global_tag": "GT_A", "calibration": {"eta_rings": 85}}
    options = [click.option("--events", type=int, default=100)]


class Release21(Release20):
    version = "2.1"
    config = {"global_tag": "GT_B", "calibration": {"eta_rings": 85}}


def handler(cls: type[Probe], store: Store, tmp_path: Path, **options: Any) -> Probe:
    made = cls(store, LocalBackend(tmp_path / "work", slots=2), options=options)
    made.payload = write_payload(tmp_path / "payload")
    return made


def made_by(store: Store) -> dict[int, tuple[Any, ...]]:
    return {o.run_number: (o.generation, o.made_by.version if o.made_by else None)
            for o in store.outputs("prompt", "probe")}


def test_each_generation_records_the_version_that_made_it_and_reprocess_selects_by_it(
        db_url: str, tmp_path: Path) -> None:
    with Store.open(db_url, actor="tester", create=True) as store:
        make_campaign(store, [5, 6, 7], meta={"jobs": 1})
        old = handler(Release20, store, tmp_path, events=300)
        old.submit("prompt")
        settle(old)
        made = MadeBy("2.0", {"calibration": {"eta_rings": 85}, "events": 300, "global_tag": "GT_A"})
        assert [o.made_by for o in store.outputs("prompt", "probe")] == [made] * 3
        # history: the claim's row says which version made the generation it opened
        rows = as_json(db_url, "history", "-c", "prompt", "--task", "probe", "--run", "5", "--kind", "task")
        assert [(r["to_status"], r["made_by"]) for r in rows] == [
            ("new", None), ("processing", {"version": "2.0", "config": made.config}), ("done", None)]
        text = ok(db_url, "history", "-c", "prompt", "--task", "probe", "--run", "5", "--kind", "task").stdout
        assert ("claimed by submit (made by version 2.0; calibration={\"eta_rings\": 85}; events=300;"
                " global_tag=GT_A)") in " ".join(text.split())
        # the jobs knew it too
        job = store.list_jobs("prompt", "probe", run=5)[0]
        seen = json.loads((Path(str(job.fields["logs"])) / "run.json").read_text())["env"]
        assert seen["ECALSTATE_WORKFLOW_VERSION"] == "2.0" and seen["ECALSTATE_OPTION_EVENTS"] == "300"

        # release 2.1: run 6 first, by hand
        ok(db_url, "reprocess", "-c", "prompt", "--task", "probe", "--runs", "6", "--reason", "try 2.1")
        new = handler(Release21, store, tmp_path)
        new.submit("prompt")
        settle(new)
        assert made_by(store) == {5: (1, "2.0"), 6: (2, "2.1"), 7: (1, "2.0")}

        # then every run another version made; a dry run first, which names the runs it leaves and why
        plan = as_json(db_url, "reprocess", "-c", "prompt", "--task", "probe", "--version-not", "2.1",
                       "--reason", "release 2.1", "--dry-run")
        assert [(c["key"], c["outcome"], c["reason"]) for c in plan["changes"]] == [
            ("probe run 6", "unchanged", "made by version 2.1"), ("probe run 5", "changed", "made by version 2.0"),
            ("probe run 7", "changed", "made by version 2.0")]
        within = as_json(db_url, "reprocess", "-c", "prompt", "--task", "probe", "--version-not", "2.1", "--runs",
                         "6-7", "--reason", "release 2.1", "--dry-run")
        assert [(c["key"], c["outcome"]) for c in within["changes"]] == [("probe run 6", "unchanged"),
                                                                         ("probe run 7", "changed")]
        ok(db_url, "reprocess", "-c", "prompt", "--task", "probe", "--version-not", "2.1", "--reason", "release 2.1")
        assert {r["run_number"]: r["status"] for r in store.list_runs("prompt", "probe")} == {
            5: "reprocess", 6: "done", 7: "reprocess"}
        new.submit("prompt")
        settle(new)
        assert made_by(store) == {5: (2, "2.1"), 6: (2, "2.1"), 7: (2, "2.1")}
        nothing = ok(db_url, "reprocess", "-c", "prompt", "--task", "probe", "--version-not", "2.1", "--reason", "x")
        assert nothing.stdout.strip().splitlines()[-1] == "changed 0, unchanged 3, refused 0"
        # a run left as it is reads as such, not as a move it did not make
        assert re.search(r"unchanged\s+probe run 5\s+stays done\s+\(made by version 2\.1\)", nothing.stdout)
        assert "->" not in nothing.stdout


def test_the_export_carries_the_version_in_a_point_of_its_own(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    with Store.open(db, actor="tester", create=True) as store:
        make_campaign(store, [5], meta={"jobs": 1})
        old = handler(Release20, store, tmp_path)
        old.submit("prompt")
        settle(old)
    ok(db, "export", "--out", str(tmp_path / "out.lp"))
    lines = (tmp_path / "out.lp").read_text().splitlines()
    made = [line for line in lines if line.startswith("made_by,")]
    assert len(made) == 1
    assert made[0].rsplit(" ", 1)[0] == ('made_by,campaign=prompt,run_number=5,task=probe config_calibration='
                                         '"{\\"eta_rings\\": 85}",config_events="100",config_global_tag="GT_A",'
                                         'generation=1i,version="2.0"')
    # a status never shares its point with these fields
    assert not any(line.startswith("run,") and "version" in line for line in lines)


class NoVersion(Probe):
    pass


class BadVersion(Probe):
    version = "2.1\n\x1b[31mred"


class HugeConfig(Probe):
    version = "1"
    config = {"blob": "x" * 5000}


class OddConfig(Probe):
    version = "1"
    config = {"when": object()}


def test_no_version_is_said_and_a_bad_one_is_refused_before_anything_is_claimed(tmp_path: Path) -> None:
    with Store.open(str(tmp_path / "s.db"), actor="tester", create=True) as store:
        make_campaign(store, [5], meta={"jobs": 1})
        for cls, said in ((BadVersion, "BadVersion: version '2.1\\n\\x1b[31mred' is not a version"),
                          (HugeConfig, "HugeConfig: what made a generation (version and configuration) would take"
                                       " 5053 bytes in the audit, more than 4096"),
                          (OddConfig, "OddConfig: config['when']: not a JSON value")):
            with pytest.raises(EcalStateError) as caught:
                handler(cls, store, tmp_path).submit("prompt")
            assert said in str(caught.value)
            assert store.instance("prompt", "probe", 5).status == "new"
        plain = handler(NoVersion, store, tmp_path)
        plain.submit("prompt")
        settle(plain)
        assert store.outputs("prompt", "probe")[0].made_by is None
        assert invoke(str(tmp_path / "s.db"), "history", "-c", "prompt", "--kind", "task").stdout.count(
            "claimed by submit (made by") == 0
