"""The shift's hand-over report (issue 23, item 2): ``ecalstate report shift`` says, as plain text or Markdown, what
happened in a time window and what still needs action. One test per section (what it must mention, and nothing
from before ``--since``), the command line's refusals, stored text kept inert, and the caps that keep a year's
window a page long. The scripted night that every section must tell is tests/test_shift_night.py.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import pytest
from cli_support import dump
from click.testing import CliRunner, Result

from ecalstate import JobUpdate, RunSpec, Store
from ecalstate.attention import attention, describe
from ecalstate.claims import Eligible
from ecalstate.cli import main
from ecalstate.clock import TS_FORMAT, human_time
from ecalstate.results import BatchRecord, MadeBy
from ecalstate.shiftreport import shift_report
from ecalstate.sources import SourceBatch, SourceRun
from ecalstate.sources.store import RunSources

C = "prompt"


def ago(hours: float) -> str:
    """A time ``hours`` ago, as a run source writes an end time."""
    return (datetime.now(timezone.utc) - timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def mark(store: Store) -> str:
    """The store's time now, strictly before anything written after it."""
    now = store.clock()
    time.sleep(0.002)
    return now


def shift(db: str, *args: str, actor: str = "shifter", fmt: str = "text", ok: bool = True) -> Result:
    """``ecalstate --db DB report shift -c prompt ARGS --format FMT`` through the real command line."""
    runner = CliRunner(env={"ECALSTATE_CAMPAIGN": None, "ECALSTATE_DB": None})
    result = runner.invoke(main, ["--db", db, "--actor", actor, "report", "shift", "-c", C, "--format", fmt, *args],
                           catch_exceptions=True, prog_name="ecalstate")
    if ok:
        assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result


def both(db: str, *args: str) -> list[str]:
    """The report as text and as Markdown."""
    return [shift(db, *args).stdout, shift(db, *args, fmt="markdown").stdout]


def section(text: str, title: str) -> str:
    """One section of a text or Markdown report: from its title to the next title."""
    heads = list(re.finditer(r"^(?:## )?[A-Z][^\n]*$", text, re.M))
    for here, after in zip(heads, heads[1:] + [None]):
        if here.group().lstrip("# ").startswith(title):
            return text[here.start():after.start() if after else len(text)]
    raise AssertionError(f"no section {title!r} in:\n{text}")


def chain(store: Store, reco_retries: int = 1) -> None:
    """Campaign prompt: reco per run -> calib per fill (its runs grouped), on collisions runs only."""
    store.create_campaign(C)
    store.add_task(C, "reco", max_retries=reco_retries)
    store.add_task(C, "calib", depends_on=["reco"], max_retries=0)
    store.create_rtype(C, "collisions", "class=Collisions")
    store.update_rtype(C, "collisions", add=["reco", "calib"])


def collisions(*runs: tuple[int, int], ended: float = 1.0) -> list[RunSpec]:
    return [RunSpec(r, f, {"class": "Collisions", "end_time": ago(ended)}) for r, f in runs]


def finish(store: Store, task: str, runs: Sequence[int], made_by: Optional[MadeBy] = None,
           group_by: Optional[str] = None) -> None:
    """Claim ``task`` for exactly ``runs`` (one group each, or grouped as ``group_by`` says), one job each, done."""
    wanted = set(runs)

    def each(eligible: list[Eligible]) -> list[list[Eligible]]:
        return [[e] for e in eligible if e.run_number in wanted]

    claims = store.claim(C, task, group_by=group_by or each, made_by=made_by, jobs=lambda c: [(0, {})])
    assert sorted(r for c in claims for r in c.runs) == sorted(runs), claims
    store.update_jobs(C, task, [JobUpdate(c.run_number, 0, "done") for c in claims])


def fail(store: Store, task: str, run: int, reason: str) -> None:
    store.set_job_status(C, task, run, 0, "failed", reason=reason)


def retry(store: Store, task: str, run: int) -> None:
    store.set_job_status(C, task, run, 0, "idle", reason="resubmitted")


# ------------------------------------------------------------------------------------------------ runs arrived


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_runs_arrived_ended_and_skipped_each_with_why(engine: str, tmp_path: Path,
                                                     request: pytest.FixtureRequest) -> None:
    db = str(tmp_path / "state.db") if engine == "sqlite" else request.getfixturevalue("pg_url")
    with Store.open(db, actor="setup", create=True) as store:
        chain(store)
        store.inject_runs(C, collisions((380100, 9)))  # the shift before
        store.close_fill(C, 9, "closed by the shift before")
        since = mark(store)
    with Store.open(db, actor="oms-sync") as store:
        RunSources(store).apply_sync(C, "oms", SourceBatch(
            [SourceRun(RunSpec(380101, 10, {"class": "Collisions", "end_time": ago(0.5)})),
             SourceRun(RunSpec(380102, 10, {"class": "Collisions"}), ongoing=True),
             SourceRun(RunSpec(380103, 10, {"class": "Cosmics", "end_time": ago(0.4)})),
             SourceRun(RunSpec(380104, 10, {"class": "Collisions", "end_time": ago(0.3)}))],
            last_run=380104))
    with Store.open(db, actor="alice") as store:
        store.set_status(C, "reco", [380104], "skipped", reason="ECAL partly off")
        store.close_fill(C, 10, "beam dumped at 03:10, OMS late")
    with Store.open(db, read_only=True) as store:
        report = shift_report(store, C, since)
    assert [r.run_number for r in report.runs.items] == [380101, 380102, 380103, 380104]
    assert report.runs.total == 4 and [f.fill for f in report.fills.items] == [10]
    for text in both(db, "--since", since):
        runs = section(text, "Runs arrived")
        assert "4 runs arrived: 380101-380104 (fill 10)" in runs
        assert re.search(r"run 380101 \(fill 10\): arrived [^;]*, ended [^;]*; tasks calib, reco", runs)
        assert re.search(r"run 380102 \(fill 10\): arrived [^;]*; still being taken", runs)
        assert ("run 380103 (fill 10)" in runs and "no task: no run type activates its tasks: collisions needs"
                " class=Collisions (the run has class=Cosmics)" in runs)
        assert "run 380104 (fill 10)" in runs and "skipped: ECAL partly off (alice)" in runs
        fills = section(text, "Fills ended")
        assert "fill 10 ended" in fills and "beam dumped at 03:10, OMS late (alice)" in fills
        assert "380100" not in text and "fill 9 " not in text and "shift before" not in text


# ------------------------------------------------------------------------------------------------ processed


def test_groups_processed_name_their_fill_runs_and_version(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    with Store.open(db, actor="jenkins", create=True) as store:
        chain(store)
        store.inject_runs(C, collisions((380001, 9001), (380002, 9001), (380003, 9002)))
        finish(store, "reco", [380001, 380002, 380003], MadeBy("1.3"))
        finish(store, "calib", [380001, 380002], MadeBy("1.9"), group_by="fill")  # fill 9001, the shift before
        since = mark(store)
        store.inject_runs(C, collisions((380004, 9002), (380005, 9003)))  # fill 9003 ends fill 9002
        finish(store, "reco", [380004, 380005], MadeBy("1.4"))
        finish(store, "calib", [380003, 380004], MadeBy("2.0", {"global_tag": "GT_1"}), group_by="fill")
        report = shift_report(store, C, since)
    groups = [(p.task, p.fill, p.runs, p.version) for p in report.processed.items]
    assert groups == [("calib", 9002, [380003, 380004], "2.0"), ("reco", None, [380004, 380005], "1.4")]
    for text in both(db, "--since", since):
        done = section(text, "Processed")
        assert "fill 9002: calib 2.0 from runs 380003-380004" in done
        assert "reco 1.4: 2 runs done (380004-380005)" in done
        assert "9001" not in text and "1.9" not in text and "1.3" not in text


# ------------------------------------------------------------------------------------------------ failures


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_failures_say_whether_and_how_they_were_recovered(engine: str, tmp_path: Path,
                                                         request: pytest.FixtureRequest) -> None:
    db = str(tmp_path / "state.db") if engine == "sqlite" else request.getfixturevalue("pg_url")
    with Store.open(db, actor="jenkins", create=True) as store:
        chain(store, reco_retries=1)
        store.inject_runs(C, collisions(*[(r, 9001) for r in range(380001, 380008)]))
        store.claim(C, "reco", jobs=lambda c: [(0, {})])
        fail(store, "reco", 380007, "exit 1: the shift before")  # failed and retried before --since
        retry(store, "reco", 380007)
        since = mark(store)
        fail(store, "reco", 380001, "exit 3: input marked broken")  # retried and done: recovered
        retry(store, "reco", 380001)
        store.set_job_status(C, "reco", 380001, 0, "done")
        for run in (380002, 380004, 380005):  # failed twice: no retry left
            fail(store, "reco", run, "exit 3: corrupt file")
            retry(store, "reco", run)
            fail(store, "reco", run, "exit 3: corrupt file")
        fail(store, "reco", 380003, "held: memory exceeded")  # its retry is the next resubmit's
    with Store.open(db, actor="alice") as store:
        store.reprocess(C, "reco", runs=[380004], reason="input file repaired")
        store.set_status(C, "reco", [380005], "skipped", reason="bad DQ, not worth it")
    with Store.open(db, read_only=True) as store:
        report = shift_report(store, C, since)
    fates = {(f.task, f.run_number): f.fate for f in report.failures.items}
    assert fates == {("reco", 380001): "recovered", ("reco", 380002): "failed", ("reco", 380003): "waiting",
                     ("reco", 380004): "reprocess", ("reco", 380005): "skipped"}
    assert [(b.task, b.run_number, b.upstream) for b in report.blocked.items] == [("calib", 380002, "reco")]
    for text in both(db, "--since", since):
        failures = section(text, "Failures and their fate")
        line = {r: next(x for x in failures.splitlines() if f"reco run {r}:" in x) for r in range(380001, 380006)}
        assert "exit 3: input marked broken" in line[380001] and "recovered by a retry: attempt 2 done" in line[380001]
        assert "2 failed attempts" in line[380002] and "failed for good: no retry left" in line[380002]
        assert "held: memory exceeded" in line[380003]
        assert "waits for a resubmit (attempt 1 of 2 failed)" in line[380003]
        assert "reprocessed by alice: input file repaired" in line[380004]
        assert "skipped by alice: bad DQ, not worth it" in line[380005]
        assert "calib run 380002 blocked: its upstream reco failed" in failures
        assert "380007" not in text and "the shift before" not in text


# ------------------------------------------------------------------------------------------------ operator actions


def test_operator_actions_say_who_and_why_and_leave_the_handlers_out(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    with Store.open(db, actor="bob", create=True) as store:
        chain(store)
        store.inject_runs(C, collisions(*[(r, 9001) for r in range(380001, 380006)]))
        store.set_status(C, "reco", [380005], "skipped", reason="bob's skip, the shift before")
        since = mark(store)
    with Store.open(db, actor="jenkins") as store:
        finish(store, "reco", [380001, 380002, 380004])
    with Store.open(db, actor="alice") as store:
        store.reprocess(C, "reco", runs=[380001, 380002], reason="new pedestals")
        store.set_status(C, "reco", [380003], "skipped", reason="ECAL partly off")
        identity = store.history(C, limit=1)[0].identity
        report = shift_report(store, C, since)
    assert [(a.actor, a.task, a.to_status, a.runs, a.reason) for a in report.actions.items] == [
        ("alice", "reco", "reprocess", [380001, 380002], "new pedestals"),
        ("alice", "reco", "skipped", [380003], "ECAL partly off")]
    assert [(c.task, c.from_status, c.to_status, c.runs) for c in report.actions.items[1].cascade] == [
        ("calib", "new", "skipped", [380003])]  # the skip's cascade, told with it
    for text in both(db, "--since", since):
        actions = section(text, "Operator actions")
        assert re.search(r"alice \[" + re.escape(identity) + r"\]: reco done -> reprocess, runs 380001-380002:"
                         r" new pedestals", actions), actions
        assert "alice [" in actions and "reco new -> skipped, run 380003: ECAL partly off; cascade: calib new ->" \
            " skipped, run 380003" in actions
        assert "jenkins" not in actions and "bob" not in text and "380005" not in text


# ------------------------------------------------------------------------------------------------ stages


def test_stages_that_failed_were_silent_or_were_killed_after_their_claim(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    with Store.open(db, actor="jenkins-reco-40", create=True) as store:
        chain(store)
        three_hours_ago = (datetime.now(timezone.utc) - timedelta(hours=3)).strftime(TS_FORMAT)
        store.clock = lambda: three_hours_ago  # type: ignore[method-assign]  # (the audit's times never go back)
        store.heartbeat(C, "calib", "submit", True, "submit: nothing to do")  # then nothing: silent
        store.clock = type(store).clock.__get__(store)  # type: ignore[method-assign]
        store.inject_runs(C, collisions(*[(r, 9001) for r in range(380001, 380005)]))
        store.heartbeat(C, "reco", "check", False, "the shift before: schedd unreachable")
        since = mark(store)
        for message in ("check: schedd unreachable", "check: schedd unreachable", "resubmit: proxy expired"):
            store.heartbeat(C, "reco", "check" if "check" in message else "resubmit", False, message)
        store.heartbeat(C, "reco", "check", True, "check: active 0")
    jobs = {"jobs": lambda c: [(0, {}), (1, {})]}
    with Store.open(db, actor="jenkins-reco-41") as store:  # a build killed after each of two claims
        [killed] = store.claim(C, "reco", 1, **jobs)
        [left] = store.claim(C, "reco", 1, **jobs)
        [fine] = store.claim(C, "reco", 1, **jobs)
        store.record_batch_ids(C, "reco", fine.run_number, 1, [BatchRecord(j, 1, f"local:{j}", {"logs": "/w"})
                                                               for j in (0, 1)])
    with Store.open(db, actor="jenkins-reco-42") as store:  # the next build submits what the first one left
        store.record_batch_ids(C, "reco", killed.run_number, 1, [BatchRecord(j, 1, f"local:{j}", {"logs": "/w"})
                                                                 for j in (0, 1)])
        report = shift_report(store, C, since)
    kinds = sorted((s.kind, s.task, s.stage) for s in report.stages.items)
    assert kinds == [("failed", "reco", "check"), ("failed", "reco", "resubmit"), ("killed", "reco", "submit"),
                     ("killed", "reco", "submit"), ("silent", "calib", "submit")]
    for text in both(db, "--since", since):
        stages = section(text, "Stages")
        assert "reco check failed 2 times, last " in stages and ": check: schedd unreachable" in stages
        assert "reco resubmit failed once, " in stages and ": resubmit: proxy expired" in stages
        assert "calib submit silent: its last heartbeat " in stages
        killed_line = next(x for x in stages.splitlines() if f"run {killed.run_number} " in x)
        assert "reco submit claimed run" in killed_line and "(jenkins-reco-41)" in killed_line
        assert "was killed or failed after its claim" in killed_line
        assert "its jobs were submitted " in killed_line and "by jenkins-reco-42" in killed_line
        left_line = next(x for x in stages.splitlines() if f"run {left.run_number} " in x)
        assert "its jobs are not submitted yet" in left_line
        assert f"run {fine.run_number} " not in stages and "shift before" not in text


# ------------------------------------------------------------------------------------------------ needs action


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_what_needs_action_is_the_attention_models_with_its_commands(engine: str, tmp_path: Path,
                                                                    request: pytest.FixtureRequest) -> None:
    db = str(tmp_path / "state.db") if engine == "sqlite" else request.getfixturevalue("pg_url")
    with Store.open(db, actor="jenkins", create=True) as store:
        chain(store, reco_retries=0)
        store.inject_runs(C, collisions((380001, 9001), (380002, 9001), (380003, 9002)))
        store.claim(C, "reco", jobs=lambda c: [(0, {})])
        fail(store, "reco", 380002, "exit 3")
        since = mark(store)
        expected = [describe(i, r) for i, r in attention(store, C).reasons() if r.level != "info"]
    assert len(expected) >= 2 and any("ecalstate reprocess -c prompt --task reco --runs 380002" in e
                                      for e in expected)
    for text in both(db, "--since", since):
        needs = section(text, "Needs action now")
        for line in expected:
            assert line.split(" (since ")[0] in needs and line.split("; resolve: ")[1] in needs, (line, needs)
    quiet = Path(tmp_path / "quiet.db")
    with Store.open(str(quiet), create=True) as store:
        store.create_campaign(C)
    assert "Needs action now: none" in shift(str(quiet), "--since", "1h").stdout


# ------------------------------------------------------------------------------------------------ deadlines


def test_deadlines_at_risk_missed_and_done_late_with_the_windows_latency(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    with Store.open(db, actor="jenkins", create=True) as store:
        chain(store)
        store.update_task(C, "reco", deadline=3600, warn_before=1800)
        store.inject_runs(C, [RunSpec(380001, 9001, {"class": "Collisions", "end_time": ago(5)})])
        finish(store, "reco", [380001])  # done late in the shift before
        since = mark(store)
        store.inject_runs(C, [RunSpec(r, 9002, {"class": "Collisions", "end_time": ago(h)})
                              for r, h in ((380002, 2.0), (380003, 0.75), (380004, 3.0), (380005, 0.1))])
        finish(store, "reco", [380004, 380005])  # late (3 h after its run ended), and in time
        report = shift_report(store, C, since)
    assert [d.run_number for d in report.deadlines.missed.items] == [380002]
    assert [d.run_number for d in report.deadlines.at_risk.items] == [380003]
    assert [d.run_number for d in report.deadlines.done_late.items] == [380004]
    [row] = report.deadlines.latency
    assert (row.task, row.count, row.within) == ("reco", 2, 0.5)
    for text in both(db, "--since", since):
        due = section(text, "Deadlines")
        assert re.search(r"missed: reco run 380002 \(fill 9002\): due [^,]*, run end ", due)
        assert re.search(r"at risk: reco run 380003 \(fill 9002\): due ", due)
        assert re.search(r"done late: reco run 380004 \(fill 9002\): due [^,]*, done [^ ]*"
                         r" \(3\.0 h after its run end\)", due)
        assert re.search(r"latency: reco: 2 done, p50 [0-9.]+ h, p95 [0-9.]+ h, max 3\.0 h, 50% within", due)
        assert "380001" not in text


# ------------------------------------------------------------------------------------------------ the command line


def test_the_command_line_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    with Store.open(db, create=True) as store:
        chain(store)
        store.inject_runs(C, collisions((380001, 9001)))
    before = dump(db)
    for args, code, words in [
        (["--since", "yesterday"], 2, "invalid time 'yesterday'"),
        (["--since", "2h", "--until", "3h"], 2, "--until must come after --since"),
        (["--limit", "0"], 2, "--limit"),
        (["--format", "html"], 2, "'html' is not one of 'text', 'markdown'"),
    ]:
        result = shift(db, *args, ok=False)
        assert result.exit_code == code and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert words in result.stderr and "Traceback" not in result.stderr and result.stdout == ""
    runner = CliRunner(env={"ECALSTATE_CAMPAIGN": None, "ECALSTATE_DB": None})
    unknown = runner.invoke(main, ["--db", db, "report", "shift", "-c", "nope"], prog_name="ecalstate")
    assert unknown.exit_code == 1 and unknown.stderr.strip() == "Error: unknown campaign 'nope'"
    shift(db, "--since", "1h")
    assert dump(db) == before  # the report only reads


def test_json_gives_every_section_with_its_total(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    with Store.open(db, create=True) as store:
        chain(store)
        since = mark(store)
        store.inject_runs(C, collisions((380001, 9001), (380002, 9001)))
    runner = CliRunner(env={"ECALSTATE_CAMPAIGN": None, "ECALSTATE_DB": None})
    result = runner.invoke(main, ["--db", db, "--json", "report", "shift", "-c", C, "--since", since])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["campaign"] == C and data["since"] == since
    for name in ("runs", "fills", "processed", "failures", "blocked", "actions", "stages", "needs_action"):
        assert set(data[name]) == {"items", "total", "more"}, name
    assert data["runs"]["total"] == 2 and [r["run_number"] for r in data["runs"]["items"]] == [380001, 380002]
    assert set(data["deadlines"]) == {"at_risk", "missed", "done_late", "latency"}


HOSTILE = "\x1b[2J\x1b]0;owned\x07 see [this](http://evil.example/x) ![](http://evil.example/p.png) <img src=x> `rm` |"


def test_stored_text_stays_inert_in_text_and_markdown(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    with Store.open(db, actor=HOSTILE, create=True) as store:
        chain(store)
        since = mark(store)
        store.inject_runs(C, collisions((380001, 9001)))
        store.set_status(C, "reco", [380001], "skipped", reason=HOSTILE)
    text, markdown = both(db, "--since", since)
    for out in (text, markdown):
        assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2J\\x1b]0;owned\\x07 see [this](http" in text  # shown as escapes, never sent
    assert "\\\\x1b\\[2J" in markdown  # the same escapes, as Markdown shows a backslash and a bracket
    unescaped = re.sub(r"\\.", "", markdown)  # what Markdown reads as markup: no link, image, HTML or code span
    assert "[this]" not in unescaped and "![](" not in unescaped and "<img" not in unescaped and "`rm`" not in unescaped
    assert "\\[this\\]" in markdown and "\\<img src=x\\>" in markdown and "\\`rm\\`" in markdown


# ------------------------------------------------------------------------------------------------ bounded


def test_every_section_is_capped_and_says_how_to_see_the_rest(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    runs = list(range(380001, 380301))
    with Store.open(db, actor="jenkins", create=True) as store:
        chain(store, reco_retries=0)
        since = mark(store)
        store.inject_runs(C, collisions(*[(r, 9000 + i // 10) for i, r in enumerate(runs)]))
        store.claim(C, "reco")
        for run in runs:
            store.create_jobs(C, "reco", run, [0])
        store.update_jobs(C, "reco", [JobUpdate(r, 0, "done" if r % 2 else "failed", reason=f"exit {r}")
                                      for r in runs])
        for i in range(40):
            store.heartbeat(C, "reco", "check", False, f"error {i}")
    with Store.open(db, actor="alice") as store:
        for run in runs[1::2][:60]:
            store.reprocess(C, "reco", runs=[run], reason=f"try {run} again")
    text, markdown = both(db, "--since", since, "--limit", "5")
    for out in (text, markdown):
        assert len(out.splitlines()) < 110, out
        assert "and 295 more, see `ecalstate run list -c prompt`" in section(out, "Runs arrived")
        assert all(len(line) < 300 for line in out.splitlines()), max(out.splitlines(), key=len)
        assert re.search(r"reco: 150 runs done \(380001,380003,[0-9,]*\.\.\. and \d+ more\)", section(out, "Processed"))
        assert f"and 145 more, see `ecalstate history -c prompt --since {since}" in \
            section(out, "Failures and their fate")
        assert "--status failed --all`" in section(out, "Failures and their fate")
        assert "and 55 more, see `ecalstate history -c prompt --since " in section(out, "Operator actions")
        assert "and 35 more, see `ecalstate history -c prompt --since " in section(out, "Stages")
        assert "--kind handler --all`" in section(out, "Stages")
        assert "more, see `ecalstate health -c prompt`" in section(out, "Needs action now")
    with Store.open(db, read_only=True) as store:
        report = shift_report(store, C, since, limit=5)
    assert (report.runs.total, report.failures.total, report.actions.total) == (300, 150, 60)
    assert all(len(part.items) <= 5 for part in (report.runs, report.failures, report.actions, report.stages))


def test_since_and_until_bound_the_window(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    with Store.open(db, actor="alice", create=True) as store:
        chain(store)
        store.inject_runs(C, collisions((380001, 9001)))
        since = mark(store)
        store.inject_runs(C, collisions((380002, 9001)))
        store.set_status(C, "reco", [380002], "skipped", reason="inside the window")
        until = mark(store)
        store.inject_runs(C, collisions((380003, 9001)))
        store.set_status(C, "reco", [380003], "skipped", reason="after the window")
    text = shift(db, "--since", since, "--until", until).stdout
    assert "run 380002" in text and "inside the window" in text
    assert "380001" not in section(text, "Runs arrived") and "380003" not in section(text, "Runs arrived")
    assert "after the window" not in section(text, "Operator actions")
    assert text.splitlines()[0].endswith(f"{human_time(since)} to {human_time(until)} (UTC)")


def test_nothing_to_report_says_none_in_every_section(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    with Store.open(db, create=True) as store:
        chain(store)
    text, markdown = both(db, "--since", "1h")
    for title in ("Runs arrived", "Fills ended", "Processed", "Failures and their fate", "Operator actions",
                  "Stages", "Needs action now", "Deadlines"):
        assert f"{title}: none" in text, title
        assert f"## {title}" in markdown and "none" in section(markdown, title), title

