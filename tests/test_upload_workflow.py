"""The conditions upload workflow (issue 24, part 3): phisym-calib -> phisym-validate -> phisym-upload, on the local
backend with the real job payloads and the stand-in uploader.

Validate refuses constants out of range (its instance fails, the upload waits); the upload is ordered and per fill:
each fill's constants are packaged with the dropBox metadata (destination database, input and destination tag,
since = the fill's first run, user text), hashed (sha256) and handed to the upload command; the same payload again
writes nothing, whether the store recorded it or only the destination knows it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
from handler_support import settle

from ecalstate import RunSpec, Store
from ecalstate.attention import attention
from ecalstate.backends.local import LocalBackend
from ecalstate.handler import StageFailed

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "handlers"))
from phisym_upload import PhiSymUpload  # noqa: E402
from phisym_validate import PhiSymValidate  # noqa: E402

C = "prompt"
CALIB, VALIDATE, UPLOAD = "phisym-calib", "phisym-validate", "phisym-upload"
STANDIN = REPO / "handlers" / "jobs" / "conddb_standin.py"
#: the fills of the campaign: their runs (fill 9004 is open: the last fill)
FILLS = {9001: [1, 2], 9002: [3, 4], 9003: [5], 9004: [6]}


def constants(path: Path, shift: float = 0.0, bad: Optional[float] = None) -> str:
    """Constants for every barrel crystal (``bad``: crystal (3, 17)'s value)."""
    rows = []
    for ieta in range(1, 21):
        for iphi in range(1, 73):
            value = bad if bad is not None and (ieta, iphi) == (3, 17) else 1 + 0.01 * ((ieta * 7 + iphi) % 11 - 5)
            rows.append(f"{ieta},{iphi},{value + shift:.6f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("ieta,iphi,ic\n" + "\n".join(rows) + "\n")
    return str(path)


def setup(store: Store, tmp_path: Path, bad_fill: Optional[int] = None, campaign: str = C) -> None:
    """The campaign, each ended fill calibrated (done, with its constants as output)."""
    store.create_campaign(campaign)
    store.add_task(campaign, CALIB)
    store.add_task(campaign, VALIDATE, depends_on=[CALIB], max_retries=0)
    store.add_task(campaign, UPLOAD, depends_on=[VALIDATE], max_retries=0)
    store.update_rtype(campaign, "all", add=[CALIB, VALIDATE, UPLOAD])
    store.inject_runs(campaign, [RunSpec(r, fill) for fill, runs in FILLS.items() for r in runs])
    for claim in store.claim(campaign, CALIB, group_by="fill"):
        path = constants(tmp_path / "calib" / f"fill{claim.fill}.csv", shift=0.001 * claim.run_number,
                         bad=1.8 if claim.fill == bad_fill else None)
        store.create_jobs(campaign, CALIB, claim.run_number, [0])
        store.set_job_status(campaign, CALIB, claim.run_number, 0, "done", fields={"output": path})


def handlers(store: Store, tmp_path: Path, **options: Any) -> tuple[PhiSymValidate, PhiSymUpload]:
    backend = LocalBackend(tmp_path / "work", slots=2)
    return PhiSymValidate(store, backend), PhiSymUpload(store, backend, options)


def log_lines(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "work" / "conddb-standin.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_stages(handler: Any, campaign: str = C) -> list[int]:
    """One submit, then check until its jobs ended; the runs submitted."""
    runs = handler.submit(campaign).runs
    settle(handler, campaign)
    return runs


def test_validated_fills_are_uploaded_in_run_order_with_their_metadata_and_each_payload_once(
        sqlite_url: str, tmp_path: Path) -> None:
    with Store.open(sqlite_url, actor="jenkins", create=True) as store:
        setup(store, tmp_path)
        validate, upload = handlers(store, tmp_path)
        assert run_stages(validate) == [2, 4, 5]
        assert {j.fields["crystals"] for j in store.list_jobs(C, VALIDATE)} == {1440}
        assert run_stages(upload) == [2]  # ordered: one fill in flight at a time, the first first
        assert next(t for t in store.list_tasks(C) if t.name == UPLOAD).ordered  # the handler declared it
        assert run_stages(upload) == [4]
        assert run_stages(upload) == [5]
        assert run_stages(upload) == []
        lines = log_lines(tmp_path)
        assert [(e["since"], e["userText"]) for e in lines] == [
            (1, "PhiSym IC, fill 9001, runs 1-2 (campaign prompt)"),
            (3, "PhiSym IC, fill 9002, runs 3-4 (campaign prompt)"),
            (5, "PhiSym IC, fill 9003, run 5 (campaign prompt)")]
        job = store.list_jobs(C, UPLOAD, run=2)[0]
        payload = Path(job.fields["output"])
        digest = hashlib.sha256(payload.read_bytes()).hexdigest()
        assert job.fields["payload_hash"] == digest == lines[0]["payload_hash"]
        assert payload.read_bytes() == (tmp_path / "calib" / "fill9001.csv").read_bytes()
        metadata = json.loads(payload.with_suffix(".txt").read_text())
        assert metadata == {"destinationDatabase": "oracle://cms_orcon_prod/CMS_CONDITIONS",
                            "destinationTags": {"EcalIntercalibConstants_PhiSym_prompt": {}},
                            "inputTag": "EcalIntercalibConstants_PhiSym", "since": 1,
                            "userText": "PhiSym IC, fill 9001, runs 1-2 (campaign prompt)"}
        # the same payload again writes nothing: recorded by the store, it is not even sent
        store.reprocess(C, UPLOAD, runs=[2], reason="upload again")
        assert run_stages(upload) == [2]
        again = store.list_jobs(C, UPLOAD, run=2)[0]
        assert (again.status, again.generation, again.fields["payload_hash"]) == ("done", 2, lines[0]["payload_hash"])
        assert again.fields["upload"] == "already uploaded (recorded by ecalstate): nothing sent"
        assert log_lines(tmp_path) == lines
        # payloads only the destination knows (another campaign uploaded them): the uploader writes nothing
        setup(store, tmp_path, campaign="again")
        assert run_stages(validate, "again") == [2, 4, 5]
        assert [run_stages(upload, "again") for _ in range(3)] == [[2], [4], [5]]
        assert {j.fields["upload"].split(": ", 1)[0][-16:] for j in store.list_jobs("again", UPLOAD)} == {
            "already uploaded"}
        assert log_lines(tmp_path) == lines


def test_constants_out_of_range_are_refused_and_the_later_fills_wait(sqlite_url: str, tmp_path: Path) -> None:
    with Store.open(sqlite_url, actor="jenkins", create=True) as store:
        setup(store, tmp_path, bad_fill=9002)
        validate, upload = handlers(store, tmp_path)
        run_stages(validate)
        assert [store.instance(C, VALIDATE, r).status for r in (2, 4, 5)] == ["done", "failed", "done"]
        said = [a.reason for a in store.history(C, task=VALIDATE, run=4, limit=None) if a.to_status == "failed"]
        assert any("refused: crystal (3, 17) has ic 1.804, outside [0.7, 1.4]" in r for r in said), said
        assert run_stages(upload) == [2]
        assert run_stages(upload) == []  # fill 9002 is blocked; fill 9003 waits for it
        assert [e["since"] for e in log_lines(tmp_path)] == [1]
        items = attention(store, C).by_instance()
        assert [r.code for r in items[(C, UPLOAD, 3)].reasons] == ["blocked"]
        (waits,) = items[(C, UPLOAD, 5)].reasons
        assert (waits.code, waits.message) == ("ordered", "phisym-upload run 5 waits for run 3 (new): an ordered task"
                                                          " is claimed in run order")


def test_a_failing_upload_command_fails_the_job_with_its_words(sqlite_url: str, tmp_path: Path) -> None:
    script = tmp_path / "uploader.py"
    script.write_text("import sys\nprint('dropBox: authentication failed', file=sys.stderr)\nsys.exit(4)\n")
    with Store.open(sqlite_url, actor="jenkins", create=True) as store:
        setup(store, tmp_path)
        validate, upload = handlers(store, tmp_path, upload_command=f"{sys.executable} {script}")
        run_stages(validate)
        assert run_stages(upload) == [2]
        assert store.instance(C, UPLOAD, 2).status == "failed"
        reasons = [a.reason for a in store.history(C, task=UPLOAD, run=2, limit=None) if a.to_status == "failed"]
        assert any("upload command exited 4: dropBox: authentication failed" in r for r in reasons), reasons
        assert log_lines(tmp_path) == [] and run_stages(upload) == []


def standin(log: Path, payload: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(STANDIN), "--log", str(log), str(payload)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_the_standin_writes_a_payload_once_even_when_uploaded_at_once(tmp_path: Path) -> None:
    log = tmp_path / "dest" / "uploads.jsonl"
    payloads = []
    for since in (10, 20):
        payload = tmp_path / f"tag_{since}.csv"
        constants(payload, shift=since / 1000)
        payload.with_suffix(".txt").write_text(json.dumps({
            "destinationDatabase": "sqlite_file:test.db", "destinationTags": {"tag": {}}, "inputTag": "in",
            "since": since, "userText": f"run {since}"}))
        payloads.append(payload)
    procs = [standin(log, payloads[i % 2]) for i in range(8)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8
    said = sorted(o.split(" ", 1)[0] + (" again" if "already" in o else "") for o, _ in outs)
    assert said == ["payload again"] * 6 + ["uploaded"] * 2
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(e["since"] for e in entries) == [10, 20]
    assert {e["payload_hash"] for e in entries} == {hashlib.sha256(p.read_bytes()).hexdigest() for p in payloads}
    # metadata it cannot use: one line, exit 2, nothing written
    before = log.read_bytes()
    for bad in ({"since": 0}, {"destinationTags": {}}, {"userText": 3}):
        meta = json.loads(payloads[0].with_suffix(".txt").read_text())
        broken = tmp_path / "broken.csv"
        broken.write_text("x")
        broken.with_suffix(".txt").write_text(json.dumps({**meta, **bad}))
        proc = standin(log, broken)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert log.read_bytes() == before


def test_the_upload_options_on_the_command_line(sqlite_url: str, tmp_path: Path) -> None:
    help_text = subprocess.run([sys.executable, str(REPO / "handlers" / "phisym_upload.py"), "submit", "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    for option in ("--upload-command", "PHISYM_UPLOAD_COMMAND", "--standin-log", "--destination-tag",
                   "--input-tag", "--destination-database"):
        assert option in help_text
    with Store.open(sqlite_url, actor="jenkins", create=True) as store:
        setup(store, tmp_path)
        run_stages(handlers(store, tmp_path)[0])
    log = tmp_path / "elsewhere.jsonl"
    env = {**os.environ, "PHISYM_UPLOAD_COMMAND": f"{sys.executable} {STANDIN} --log {log}"}
    result = subprocess.run([sys.executable, str(REPO / "handlers" / "phisym_upload.py"), "-c", C, "--db", sqlite_url,
                             "--workdir", str(tmp_path / "work"), "submit", "--destination-tag", "MyTag"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    with Store.open(sqlite_url) as store:
        upload = PhiSymUpload(store, LocalBackend(tmp_path / "work", slots=2), {"upload_command": env[
            "PHISYM_UPLOAD_COMMAND"], "destination_tag": "MyTag"})
        settle(upload, C)
    (entry,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert (entry["since"], entry["destinationTags"]) == (1, {"MyTag": {}})


def test_an_upload_command_carrying_a_credential_is_refused_without_quoting_it(sqlite_url: str, tmp_path: Path) -> None:
    """The command is in the job's arguments (ps, its spec), the claim's recorded options and the export: a password
    or token in it is refused before anything is claimed, and the refusal never quotes it."""
    with Store.open(sqlite_url, actor="jenkins", create=True) as store:
        setup(store, tmp_path)
        validate, _ = handlers(store, tmp_path)
        run_stages(validate)
        for command in ("uploadConditions.py --password hunter2", "uploadConditions.py --token=hunter2",
                        "uploader --url https://me:hunter2@cms-conddb.cern.ch/", "uploader 'unclosed"):
            upload = handlers(store, tmp_path, upload_command=command)[1]
            with pytest.raises(StageFailed) as refused:
                upload.submit(C)
            said = str(refused.value)
            assert "upload command" in said and "hunter2" not in said, said
            assert store.instance(C, UPLOAD, 2).status == "new"
            assert not any("hunter2" in repr(a)
                           for a in store.history(C, task=UPLOAD, limit=None))
        assert log_lines(tmp_path) == []
