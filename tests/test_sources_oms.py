"""Runs from CMS OMS (issue 12 item 4), against a local server answering OMS's JSON:API format, on the real
store (SQLite file and PostgreSQL): pagination, a run still being taken that ends later, fills that end, an
expired token, server errors. Whatever happens, no run is injected twice and none is lost."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from cli_support import invoke, ok
from oms_server import OmsServer, oms_server

from ecalstate import Store
from ecalstate.sources import SourceError
from ecalstate.sources.oms import OMSAPI, Credentials, OmsRunSource
from ecalstate.sources.sync import sync

SECRET = "s3cr3t-client-secret-value"


@pytest.fixture
def oms() -> Iterator[OmsServer]:
    with oms_server("ecal-automation", SECRET) as server:
        yield server


@pytest.fixture
def prompt(store: Store) -> Store:
    store.create_campaign("prompt")
    store.add_task("prompt", "reco")
    store.create_rtype("prompt", "physics", "ecal=true,global=true,class=Collisions", ["reco"])
    return store


def source(oms: OmsServer, **kw: Any) -> OmsRunSource:
    api = OMSAPI(oms.api_url, credentials=Credentials("ecal-automation", SECRET, oms.token_url),
                 retries=kw.pop("retries", 2), backoff=0.0)
    return OmsRunSource(api, from_run=kw.pop("from_run", 390000), page_size=kw.pop("page_size", 10), **kw)


def runs_of(store: Store) -> dict[int, tuple[Any, ...]]:
    return {r["run_number"]: (r["fill"], r["rtypes"], r["meta"]) for r in store.list_runs("prompt", None, None)}


def instances(store: Store) -> list[tuple[int, str]]:
    return sorted((h.run_number, h.to_status) for h in store.history("prompt", "reco", None, limit=None))


def test_pages_are_read_in_order_and_a_resync_injects_nothing_twice(prompt: Store, oms: OmsServer) -> None:
    for number in range(390001, 390026):
        oms.run(number, 9000 + (number - 390001) // 10)
    oms.run(389999, 8999)  # before --from-run: never read
    result = sync(prompt, "prompt", source(oms))
    assert result.new == list(range(390001, 390026)) and result.last_run == 390025
    pages = [(q["page[offset]"], q["page[limit]"], q["filter[run_number][gt]"], q["sort"])
             for q in oms.requests if q["path"] == ["/agg/api/v1/runs"]]
    assert pages == [(["0"], ["10"], ["389999"], ["run_number"]), (["10"], ["10"], ["389999"], ["run_number"]),
                     (["20"], ["10"], ["389999"], ["run_number"])]
    assert "run_number" in oms.requests[0]["fields"][0].split(",")
    assert len(instances(prompt)) == 25  # ECAL in, global, collisions: reco activated once per run
    meta = runs_of(prompt)[390001][2]
    assert (meta["ecal"], meta["global"], meta["class"], meta["lumi"]) == (True, True, "Collisions", 1.5)

    oms.run(390026, 9002, components=["DAQ", "TRACKER"])  # ECAL out: injected, no reco
    again = sync(prompt, "prompt", source(oms))
    assert (again.new, again.existing, again.instances, again.last_run) == ([390026], [], 0, 390026)
    assert runs_of(prompt)[390026][1] == ["all"]  # not physics
    assert len(instances(prompt)) == 25
    assert sync(prompt, "prompt", source(oms)).new == []
    assert sorted(runs_of(prompt)) == list(range(390001, 390027))


def test_a_run_still_being_taken_waits_then_takes_its_final_metadata(prompt: Store, oms: OmsServer) -> None:
    oms.run(390001, 9000)
    oms.run(390002, 9000, end=None, recorded_lumi=0.2)
    first = sync(prompt, "prompt", source(oms))
    assert (first.new, first.ongoing) == ([390001], [390002])
    assert runs_of(prompt)[390002] == (9000, [], {**runs_of(prompt)[390002][2], "ongoing": True})
    assert instances(prompt) == [(390001, "new")]  # no task starts on half a run

    still = sync(prompt, "prompt", source(oms))
    assert (still.new, still.ongoing, still.ended) == ([], [390002], [])
    assert oms.requests[-2]["filter[run_number][eq]"] == ["390002"]  # re-read alone, not every run after it
    oms.run(390002, 9000, end="2026-06-01T14:00:00Z", recorded_lumi=7.5)
    oms.run(390003, 9001)
    ended = sync(prompt, "prompt", source(oms))
    assert (ended.new, ended.ongoing, ended.ended, ended.instances) == ([390003], [], [390002], 2)
    fill, rtypes, meta = runs_of(prompt)[390002]
    assert (fill, rtypes, meta["lumi"], meta["end_time"], "ongoing" in meta) == (
        9000, ["all", "physics"], 7.5, "2026-06-01T14:00:00Z", False)
    assert instances(prompt) == [(390001, "new"), (390002, "new"), (390003, "new")]
    assert sync(prompt, "prompt", source(oms)).ended == []
    assert len(instances(prompt)) == 3


def test_fills_end_when_a_later_fill_starts_or_the_beam_is_dumped(prompt: Store, oms: OmsServer) -> None:
    oms.run(390001, 9000)
    oms.fill(9000)
    first = sync(prompt, "prompt", source(oms))
    assert first.fills_ended == [] and not prompt.fill_ended("prompt", 9000)
    oms.fill(9001)  # the dump was missed: a later fill tells
    oms.run(390002, 9001)
    second = sync(prompt, "prompt", source(oms))
    assert second.fills_ended == [9000] and prompt.fill_ended("prompt", 9000)
    assert not prompt.fill_ended("prompt", 9001)
    oms.fill(9001, end="2026-06-02T03:00:00Z")  # OMS: beam dumped, no run came after
    third = sync(prompt, "prompt", source(oms))
    assert third.fills_ended == [9001]
    ended = prompt.ended_fills("prompt")
    assert [(f.fill, f.reason) for f in ended] == [
        (9000, "OMS: a later fill (9001) started"), (9001, "OMS: fill ended (beam dumped) at 2026-06-02T03:00:00Z")]
    assert sync(prompt, "prompt", source(oms)).fills_ended == []
    assert prompt.close_fill("prompt", 9001, "operator") is False  # known already: nothing changes
    assert prompt.close_fill("prompt", 9002, "operator: dumped, OMS late") is True
    assert prompt.fill_ended("prompt", 9002)


def test_an_expired_token_is_renewed_once_and_a_refused_client_writes_nothing(prompt: Store, oms: OmsServer) -> None:
    src = source(oms)
    oms.run(390001, 9000)
    sync(prompt, "prompt", src)
    assert oms.token_requests == 1
    oms.expire_tokens()
    oms.run(390002, 9000)
    assert sync(prompt, "prompt", src).new == [390002]
    assert oms.token_requests == 2
    before = (runs_of(prompt), prompt.source_state("prompt", "oms"))
    oms.run(390003, 9000)
    wrong = OmsRunSource(OMSAPI(oms.api_url, credentials=Credentials("ecal-automation", "wrong", oms.token_url)))
    with pytest.raises(SourceError, match="refused client 'ecal-automation'") as err:
        sync(prompt, "prompt", wrong)
    assert "wrong" not in str(err.value)
    assert (runs_of(prompt), prompt.source_state("prompt", "oms")) == before


@pytest.mark.parametrize("after", [0, 1], ids=["first-page", "second-page"])
def test_a_server_error_writes_nothing_and_the_next_sync_catches_up(prompt: Store, oms: OmsServer, after: int) -> None:
    for number in range(390001, 390016):
        oms.run(number, 9000)
    oms.fail_next(3, 503, after=after)  # more than the retries: the sync fails
    with pytest.raises(SourceError, match=r"OMS failed 3 times for http://127\.0\.0\.1:\d+/agg/api/v1/runs: HTTP 503"):
        sync(prompt, "prompt", source(oms))
    assert runs_of(prompt) == {} and prompt.source_state("prompt", "oms").last_run == 0
    oms.fail_next(2, 502)  # within the retries: the sync goes through
    result = sync(prompt, "prompt", source(oms))
    assert result.new == list(range(390001, 390016)) and len(instances(prompt)) == 15


def test_max_runs_bounds_a_sync_and_the_cursor_goes_on_from_there(prompt: Store, oms: OmsServer) -> None:
    for number in range(390001, 390008):
        oms.run(number, 9000)
    assert sync(prompt, "prompt", source(oms, max_runs=4, page_size=3)).new == [390001, 390002, 390003, 390004]
    assert sync(prompt, "prompt", source(oms, max_runs=4, page_size=3)).new == [390005, 390006, 390007]


def test_run_sync_cli_reads_credentials_from_the_environment_only(sqlite_url: str, oms: OmsServer, tmp_path) -> None:
    db = sqlite_url
    ok(db, "init")
    ok(db, "campaign", "create", "prompt")
    ok(db, "task", "add", "-c", "prompt", "reco")
    ok(db, "rtype", "update", "-c", "prompt", "all", "--add", "reco")
    secret_file = tmp_path / "oms-secret"
    secret_file.write_text(SECRET + "\n")
    env = {"ECALSTATE_OMS_URL": oms.api_url, "ECALSTATE_OMS_CLIENT_ID": "ecal-automation",
           "ECALSTATE_OMS_CLIENT_SECRET_FILE": str(secret_file), "ECALSTATE_OMS_TOKEN_URL": oms.token_url}
    oms.run(390001, 9000)
    no_cursor = invoke(db, "run", "sync", "-c", "prompt", "--source", "oms", env=env)
    assert no_cursor.exit_code == 1 and no_cursor.stderr.count("\n") == 1 and "--from-run" in no_cursor.stderr
    first = json.loads(ok(db, "--json", "run", "sync", "-c", "prompt", "--source", "oms", "--from-run", "390000",
                          env=env).stdout)
    assert (first["new"], first["last_run"], first["instances"]) == ([390001], 390001, 1)
    assert "0 new runs" in ok(db, "run", "sync", "-c", "prompt", "--source", "oms", env=env).stdout
    bad = invoke(db, "run", "sync", "-c", "prompt", "--source", "oms",
                 env={**env, "ECALSTATE_OMS_CLIENT_SECRET_FILE": "", "ECALSTATE_OMS_CLIENT_SECRET": "nope"})
    assert bad.exit_code == 1 and "Traceback" not in bad.output and "nope" not in bad.output
    assert SECRET not in first.__repr__() + no_cursor.output + bad.output


def test_a_mapping_file_renames_the_metadata(sqlite_url: str, oms: OmsServer, tmp_path) -> None:
    """The OMS attribute names are configuration: the mapping of docs/migration.md, and a bad one refused."""
    db = sqlite_url
    ok(db, "init")
    ok(db, "campaign", "create", "prompt")
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    env = {"ECALSTATE_OMS_URL": oms.api_url, "ECALSTATE_OMS_CLIENT_ID": "ecal-automation",
           "ECALSTATE_OMS_CLIENT_SECRET_FILE": str(secret), "ECALSTATE_OMS_TOKEN_URL": oms.token_url}
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"meta": {"lumi": "recorded_lumi", "hlt": "hlt_key"}, "global_attr": "daq_mode",
                                   "global_value": "global", "class_attr": "run_class"}))
    oms.run(390001, 9000, hlt_key="/cdaq/physics/v1", daq_mode="global", run_class="cosmics")
    ok(db, "run", "sync", "-c", "prompt", "--source", "oms", "--from-run", "390001", "--mapping", str(mapping),
       env=env)
    with Store.open(db) as store:
        (run,) = store.list_runs("prompt", None, None)
    assert run["meta"] == {"lumi": 1.5, "hlt": "/cdaq/physics/v1", "ecal": True, "global": True, "class": "Cosmics"}
    mapping.write_text(json.dumps({"metadata": {}}))
    bad = invoke(db, "run", "sync", "-c", "prompt", "--source", "oms", "--mapping", str(mapping), env=env)
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: ") and bad.stderr.count("\n") == 1
    assert "expected a JSON object with keys among" in bad.stderr
