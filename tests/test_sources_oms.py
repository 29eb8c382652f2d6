"""Runs from CMS OMS (issue 12 item 4), against a local server answering OMS's JSON:API format, on the real
store (SQLite file and PostgreSQL): pagination, a run still being taken that ends later, fills that end, an
expired token, server errors. Whatever happens, no run is injected twice and none is lost.

Issue 20 item 4, the same server turned hostile: it redirects elsewhere (the token stays home), sends bad rows
(skipped and reported, the cursor held below a bad run), answers out of the order asked (refused), lists a run
late below the cursor (read again in the look-back), and trickles its answer (one deadline, one clean error)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import pytest
from cli_support import ECALSTATE, dump, invoke, ok
from oms_server import OmsServer, oms_server

from ecalstate import Store
from ecalstate.sources import SourceError
from ecalstate.sources.oms import OMSAPI, Credentials, OmsRunSource
from ecalstate.sources.store import RunSources
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
                 retries=kw.pop("retries", 2), backoff=kw.pop("backoff", 0.0), **(
                     {"max_bytes": kw.pop("max_bytes")} if "max_bytes" in kw else {}))
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
    pages = [(q["page[offset]"], q["page[limit]"], q["filter[run_number][GT]"], q["sort"])
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

    still = sync(prompt, "prompt", source(oms))  # within the look-back: re-read with the runs after the cursor
    assert (still.new, still.ongoing, still.ended) == ([], [390002], [])
    assert oms.requests[-2]["filter[run_number][GT]"] == ["389999"]  # the look-back, down to from_run
    still = sync(prompt, "prompt", source(oms, lookback=0))  # below it, re-read alone, not every run after it
    assert (still.new, still.ongoing, still.ended) == ([], [390002], [])
    assert oms.requests[-2]["filter[run_number][EQ]"] == ["390002"]
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
    before = (runs_of(prompt), RunSources(prompt).source_state("prompt", "oms"))
    oms.run(390003, 9000)
    wrong = OmsRunSource(OMSAPI(oms.api_url, credentials=Credentials("ecal-automation", "wrong", oms.token_url)))
    with pytest.raises(SourceError, match="refused client 'ecal-automation'") as err:
        sync(prompt, "prompt", wrong)
    assert "wrong" not in str(err.value)
    assert (runs_of(prompt), RunSources(prompt).source_state("prompt", "oms")) == before


@pytest.mark.parametrize("after", [0, 1], ids=["first-page", "second-page"])
def test_a_server_error_writes_nothing_and_the_next_sync_catches_up(prompt: Store, oms: OmsServer, after: int) -> None:
    for number in range(390001, 390016):
        oms.run(number, 9000)
    oms.fail_next(3, 503, after=after)  # more than the retries: the sync fails
    with pytest.raises(SourceError, match=r"OMS failed 3 times for http://127\.0\.0\.1:\d+/agg/api/v1/runs: HTTP 503"):
        sync(prompt, "prompt", source(oms))
    assert runs_of(prompt) == {} and RunSources(prompt).source_state("prompt", "oms").last_run == 0
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
    secret_file.chmod(0o600)
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
    secret.chmod(0o600)
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
    mapping.write_text(json.dumps({"meta": {"lumi": 5}, "fill": ["fill_number"]}))  # names must be text
    bad = invoke(db, "run", "sync", "-c", "prompt", "--source", "oms", "--mapping", str(mapping), env=env)
    assert bad.exit_code == 1 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.output
    assert "meta.lumi must name an OMS attribute" in bad.stderr


# -- issue 20 item 4: the same server, hostile ---------------------------------------------------------------------


def strict_json(text: str) -> Any:
    """JSON as the standard has it: NaN and Infinity are not JSON."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def oms_env(oms: OmsServer, tmp_path: Any) -> dict[str, str]:
    secret = tmp_path / "oms-secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    return {"ECALSTATE_OMS_URL": oms.api_url, "ECALSTATE_OMS_CLIENT_ID": "ecal-automation",
            "ECALSTATE_OMS_CLIENT_SECRET_FILE": str(secret), "ECALSTATE_OMS_TOKEN_URL": oms.token_url}


def cli_campaign(db: str) -> None:
    ok(db, "init")
    ok(db, "campaign", "create", "prompt")
    ok(db, "task", "add", "-c", "prompt", "reco")
    ok(db, "rtype", "update", "-c", "prompt", "all", "--add", "reco")


@pytest.mark.parametrize("host", ["127.0.0.2", "127.0.0.1"], ids=["another-host", "another-port"])
def test_a_redirect_elsewhere_is_refused_and_the_token_never_leaves(prompt: Store, oms: OmsServer, host: str) -> None:
    with oms_server(host=host) as other:
        for server in (oms, other):  # the other server answers too: a client that follows gets runs
            server.run(390001, 9000)
        oms.redirect_next(other.url, count=10)
        with pytest.raises(SourceError, match=r"OMS redirected http://127\.0\.0\.1:\d+/agg/api/v1/runs to "
                                              + re.escape(other.url) + r": refused") as err:
            sync(prompt, "prompt", source(oms))
        assert other.seen == []  # nothing went there: no token, no query
    assert SECRET not in str(err.value)
    assert runs_of(prompt) == {} and RunSources(prompt).source_state("prompt", "oms").last_run == 0


def test_a_redirect_on_the_same_server_is_followed(prompt: Store, oms: OmsServer) -> None:
    oms.run(390001, 9000)
    oms.redirect_next(oms.url, count=2)
    assert sync(prompt, "prompt", source(oms)).new == [390001]
    assert [path for path, headers in oms.seen].count("/agg/api/v1/runs") == 3  # two redirects, then the answer
    assert all(headers["Authorization"].startswith("Bearer ") for _, headers in oms.seen)


#: a run row's attribute set wrong, and the attribute the reason must name
BAD_RUN_ROWS = {
    "fill-text": ({"fill_number": "n/a"}, "fill_number"),
    "fill-bool": ({"fill_number": True}, "fill_number"),
    "fill-float": ({"fill_number": 9000.5}, "fill_number"),
    "fill-negative": ({"fill_number": -3}, "fill_number"),
    "minute-60": ({"end_time": "2026-06-01T23:60:00Z"}, "end_time"),
    "not-a-time": ({"start_time": "yesterday"}, "start_time"),
    "ends-before-it-starts": ({"end_time": "2026-06-01T09:00:00Z"}, "end_time"),
    "lumi-nan": ({"recorded_lumi": math.nan}, "recorded_lumi"),
    "lumi-infinity": ({"recorded_lumi": -math.inf}, "recorded_lumi"),
    "lumi-negative": ({"recorded_lumi": -1.0}, "recorded_lumi"),
    "lumi-text": ({"recorded_lumi": "1.5"}, "recorded_lumi"),
    "last-ls-float": ({"last_lumisection_number": 12.0}, "last_lumisection_number"),
    "stable-beam-text": ({"stable_beam": "yes"}, "stable_beam"),
    "components-number": ({"components": 7}, "components"),
    "hlt-key-object": ({"hlt_key": {"menu": "x"}}, "hlt_key"),
}


@pytest.mark.parametrize("bad", BAD_RUN_ROWS.values(), ids=BAD_RUN_ROWS.keys())
def test_a_bad_run_row_is_skipped_reported_and_holds_the_cursor_until_fixed(
        prompt: Store, oms: OmsServer, bad: tuple[dict[str, Any], str]) -> None:
    attrs, name = bad
    for number in (390001, 390002, 390004):
        oms.run(number, 9000)
    oms.run(390003, 9000, **attrs)
    first = sync(prompt, "prompt", source(oms))
    assert (first.new, first.last_run) == ([390001, 390002, 390004], 390002)  # the cursor stays below it
    (rejected,) = first.rejected
    assert (rejected.resource, rejected.number) == ("runs", 390003) and rejected.reason.startswith(f"{name} ")
    json.dumps(asdict(first), allow_nan=False)
    again = sync(prompt, "prompt", source(oms))  # read again and reported again, nothing written twice
    assert (again.new, again.rejected, again.last_run) == ([], [rejected], 390002)
    oms.run(390003, 9000)  # OMS fixed it
    fixed = sync(prompt, "prompt", source(oms))
    assert (fixed.new, fixed.rejected, fixed.last_run) == ([390003], [], 390004)
    assert sorted(runs_of(prompt)) == [390001, 390002, 390003, 390004] and len(instances(prompt)) == 4
    assert all(not isinstance(v, float) or math.isfinite(v) for r in runs_of(prompt).values() for v in r[2].values())


def test_a_bad_run_at_the_cursor_does_not_stall_a_full_read(prompt: Store, oms: OmsServer) -> None:
    """The cursor holds below a bad run, unless the sync read a full --max-runs and the cursor would not move:
    then it passes (the row was reported every time), or no run after the bad one would ever be read."""
    oms.run(390001, 9000, fill_number="n/a")
    for number in range(390002, 390007):
        oms.run(number, 9000)
    first = sync(prompt, "prompt", source(oms, max_runs=2, page_size=2))
    assert (first.new, first.last_run, [r.number for r in first.rejected]) == ([390002], 390000, [390001])
    second = sync(prompt, "prompt", source(oms, max_runs=2, page_size=2))
    assert (second.new, second.last_run, [r.number for r in second.rejected]) == ([], 390002, [390001])
    third = sync(prompt, "prompt", source(oms, max_runs=2, page_size=2))  # still reported from the look-back
    assert (third.new, third.last_run, [r.number for r in third.rejected]) == ([390003, 390004], 390004, [390001])
    assert sync(prompt, "prompt", source(oms)).new == [390005, 390006]


def test_credentials_never_travel_over_plain_http_to_another_machine() -> None:
    cred = Credentials("ecal-automation", SECRET, "https://auth.example.org/token")
    for url, token_url in (("http://cmsoms.example.org/agg/api", cred.token_url),
                           ("https://cmsoms.example.org/agg/api", "http://auth.example.org/token")):
        with pytest.raises(SourceError, match=r"OMS credentials go over https only \(or to this machine\), not to "
                                              r"http://[a-z.]+example\.org/") as err:
            OMSAPI(url, credentials=Credentials("ecal-automation", SECRET, token_url))
        assert SECRET not in str(err.value)
    OMSAPI("http://cmsoms.cms/agg/api")  # inside the experiment's network, without a token: fine
    OMSAPI("http://[::1]:8080/agg/api", credentials=cred)  # this machine


@pytest.mark.parametrize("number", [None, "390003", 390003.0, True, 2 ** 63],
                         ids=["null", "text", "float", "bool", "beyond-int64"])
def test_a_run_row_without_a_usable_run_number_is_reported_and_passed(prompt: Store, oms: OmsServer,
                                                                      number: Any) -> None:
    """A row without a run number can never be injected: reported, and the cursor goes on (OMS fixing it gives
    it a number, which the look-back reads)."""
    oms.run(390001, 9000)
    oms.run(390004, 9000)
    oms.run(number, 9000)
    result = sync(prompt, "prompt", source(oms))
    assert (result.new, result.last_run) == ([390001, 390004], 390004)
    assert [(r.resource, r.number, r.reason.split(" ")[0]) for r in result.rejected] == [("runs", None, "run_number")]


@pytest.mark.parametrize("number", [None, "9001", 9001.5, False], ids=["null", "text", "float", "bool"])
def test_a_bad_fills_row_is_skipped_and_the_other_fills_still_end(prompt: Store, oms: OmsServer, number: Any) -> None:
    oms.run(390001, 9000)
    oms.run(390002, 9002)
    for fill in (9000, number, 9002):
        oms.fill(fill)
    result = sync(prompt, "prompt", source(oms))
    assert (result.new, result.fills_ended) == ([390001, 390002], [9000])  # fill 9002 started: 9000 ended
    assert [(r.resource, r.number, r.reason.split(" ")[0]) for r in result.rejected] == [("fills", None, "fill_number")]


def test_a_fill_with_a_bad_end_time_is_not_recorded_as_ended_until_fixed(prompt: Store, oms: OmsServer) -> None:
    oms.run(390001, 9000)
    oms.fill(9000, end="2026-06-02T24:00:00Z")
    first = sync(prompt, "prompt", source(oms))
    assert first.fills_ended == [] and not prompt.fill_ended("prompt", 9000)
    assert [(r.resource, r.number) for r in first.rejected] == [("fills", 9000)]
    assert first.rejected[0].reason.startswith('end_time "2026-06-02T24:00:00Z": not a time')
    oms.fill(9000, end="2026-06-02T23:59:00Z")
    assert sync(prompt, "prompt", source(oms)).fills_ended == [9000]


def test_run_sync_json_reports_bad_rows_and_never_carries_nan(sqlite_url: str, oms: OmsServer, tmp_path: Any) -> None:
    db, env = sqlite_url, oms_env(oms, tmp_path)
    cli_campaign(db)
    oms.run(390001, 9000)
    oms.run(390002, 9000, recorded_lumi=math.nan)
    oms.run(390003, 9001, delivered_lumi=math.inf)
    oms.fill(9000)
    oms.fill(None)
    result = ok(db, "--json", "run", "sync", "-c", "prompt", "--source", "oms", "--from-run", "390001", env=env)
    data = strict_json(result.stdout)
    assert (data["new"], data["last_run"]) == ([390001], 390001)
    assert [(r["resource"], r["number"]) for r in data["rejected"]] == [("runs", 390002), ("runs", 390003),
                                                                          ("fills", None)]
    assert data["rejected"][0]["reason"].startswith("recorded_lumi NaN: not a finite number")
    warnings = result.stderr.splitlines()
    assert len(warnings) == 3 and all(w.startswith("warning: OMS ") for w in warnings), result.stderr
    strict_json(ok(db, "--json", "run", "list", "-c", "prompt").stdout)  # nothing stored carries NaN
    text = ok(db, "run", "sync", "-c", "prompt", "--source", "oms", env=env)
    assert "3 bad OMS rows skipped" in text.stdout and "Traceback" not in text.output


def test_an_answer_out_of_the_order_asked_is_refused_and_nothing_is_lost(prompt: Store, oms: OmsServer) -> None:
    for number in range(390001, 390016):
        oms.run(number, 9000)
    oms.reorder = True  # the server ignores sort=run_number
    with pytest.raises(SourceError, match=r"OMS answered runs out of the order asked \(sort=run_number\): "
                                          r"390014 after 390015; nothing written"):
        sync(prompt, "prompt", source(oms, max_runs=4, page_size=3))
    assert runs_of(prompt) == {} and RunSources(prompt).source_state("prompt", "oms").last_run == 0
    oms.reorder = False
    assert sync(prompt, "prompt", source(oms, max_runs=4, page_size=3)).new == [390001, 390002, 390003, 390004]
    assert sync(prompt, "prompt", source(oms)).new == list(range(390005, 390016))


def test_a_page_longer_than_asked_is_refused(prompt: Store, oms: OmsServer) -> None:
    """A server ignoring page[limit] would let one sync read past --max-runs, and page offsets mean nothing."""
    for number in range(390001, 390016):
        oms.run(number, 9000)
    oms.unpaged = True
    with pytest.raises(SourceError, match=r"OMS answered 15 runs to a page of 10"):
        sync(prompt, "prompt", source(oms))
    assert runs_of(prompt) == {}


def test_a_run_listed_late_below_the_cursor_is_read_in_the_look_back(prompt: Store, oms: OmsServer) -> None:
    for number in (390001, 390002, 390003, 390005):
        oms.run(number, 9000)
    assert sync(prompt, "prompt", source(oms, from_run=389000)).last_run == 390005
    oms.run(390004, 9000)  # OMS lists it late
    assert sync(prompt, "prompt", source(oms, lookback=1)).new == []  # beyond a window of one run number
    late = sync(prompt, "prompt", source(oms, from_run=389000))
    assert (late.new, late.existing, late.last_run) == ([390004], [], 390005)  # the others re-read are no news
    assert sorted(runs_of(prompt)) == [390001, 390002, 390003, 390004, 390005] and len(instances(prompt)) == 5
    assert oms.requests[-2]["filter[run_number][GT]"] == [str(390005 - 100)]  # the default window: 100 numbers


def test_retries_and_their_waits_stay_within_the_deadline(prompt: Store, oms: OmsServer) -> None:
    oms.run(390001, 9000)
    oms.fail_next(20, 503)
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"OMS failed 2 times for http://127\.0\.0\.1:\d+/agg/api/v1/runs: HTTP 503 "
                                          r".*; no time left for another try within the 2 s deadline"):
        sync(prompt, "prompt", source(oms, retries=10, backoff=1.0, timeout=2.0))
    assert time.monotonic() - started < 2.5


def test_an_answer_larger_than_the_bound_is_refused(prompt: Store, oms: OmsServer) -> None:
    for number in range(390001, 390011):
        oms.run(number, 9000)
    with pytest.raises(SourceError, match=r"OMS answered http://127\.0\.0\.1:\d+/agg/api/v1/runs with more than "
                                          r"2000 bytes: refused"):
        sync(prompt, "prompt", source(oms, max_bytes=2000))
    assert runs_of(prompt) == {}


def test_run_sync_timeout_is_one_deadline_against_a_trickling_server(sqlite_url: str, oms: OmsServer,
                                                                      tmp_path: Any) -> None:
    """The issue's case: a byte every 0.2 s kept every socket read under --timeout 1 for as long as the server
    liked, then a traceback. Now: one deadline for the whole sync, one line, exit 1, nothing written."""
    db, env = sqlite_url, {**os.environ, **oms_env(oms, tmp_path)}
    cli_campaign(db)
    oms.run(390001, 9000)
    started = time.monotonic()
    idle = subprocess.run([ECALSTATE, "--db", db, "run", "list", "-c", "prompt"], env=env, capture_output=True,
                          text=True, timeout=60)
    startup = time.monotonic() - started  # the command's own start-up, to measure the sync alone
    assert idle.returncode == 0
    oms.trickle_next(0.2, give_up=20.0, count=10)  # the old client: 20 s, then IncompleteRead
    before = dump(db)
    started = time.monotonic()
    proc = subprocess.run([ECALSTATE, "--db", db, "run", "sync", "-c", "prompt", "--source", "oms", "--from-run",
                           "390001", "--timeout", "1"], env=env, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started - startup
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.fullmatch(r"Error: OMS did not answer http://127\.0\.0\.1:\d+/agg/api/v1/runs within the 1 s "
                        r"deadline \(--timeout\)\n", proc.stderr), proc.stderr
    assert took < 3.0, took  # 1 s and the exit (about 0.8 s here, measured); margin for a loaded machine
    assert dump(db) == before


def test_an_oms_client_secret_file_others_can_read_is_refused(sqlite_url: str, oms: OmsServer, tmp_path) -> None:
    """Issue 20, item 5: the OMS client secret's file must be private, like every secret's file; the refusal names
    the file and the fix, never the secret, and nothing is synced."""
    db = sqlite_url
    ok(db, "init")
    ok(db, "campaign", "create", "prompt")
    secret = tmp_path / "oms-secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o640)
    env = {"ECALSTATE_OMS_URL": oms.api_url, "ECALSTATE_OMS_CLIENT_ID": "ecal-automation",
           "ECALSTATE_OMS_CLIENT_SECRET_FILE": str(secret), "ECALSTATE_OMS_TOKEN_URL": oms.token_url}
    oms.run(390001, 9000)
    bad = invoke(db, "run", "sync", "-c", "prompt", "--source", "oms", "--from-run", "390000", env=env)
    assert bad.exit_code == 1 and bad.stderr.count("\n") == 1, bad.output
    assert f"chmod 600 {secret}" in bad.stderr and SECRET not in bad.output
    with Store.open(db) as store:
        assert store.list_runs("prompt", None, None) == []
    secret.chmod(0o600)
    ok(db, "run", "sync", "-c", "prompt", "--source", "oms", "--from-run", "390000", env=env)
