"""``ecalstate run sync --source file``: a run file through the same source interface as OMS (issue 12 item 4)."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import as_json, dump, invoke, ok


def setup(db: str) -> None:
    ok(db, "init")
    ok(db, "campaign", "create", "rereco")
    ok(db, "task", "add", "-c", "rereco", "reco")
    ok(db, "rtype", "create", "-c", "rereco", "ecal", "--filter", "ecal=true")
    ok(db, "rtype", "update", "-c", "rereco", "ecal", "--add", "reco")


def write(path: Path, runs: list[dict[str, object]]) -> str:
    path.write_text(json.dumps(runs))
    return str(path)


def test_a_file_is_synced_once_and_its_ongoing_run_activates_when_it_ends(sqlite_url: str, tmp_path: Path) -> None:
    setup(sqlite_url)
    runs = [{"run_number": 390001, "fill": 9000, "ecal": True, "end_time": "2026-06-01T12:00:00Z"},
            {"run_number": 390002, "fill": 9001, "ecal": True, "end_time": None}]
    path = write(tmp_path / "runs.json", runs)
    sync = ("--json", "run", "sync", "-c", "rereco", "--source", "file", "--path", path)
    first = json.loads(ok(sqlite_url, *sync).stdout)
    assert (first["new"], first["ongoing"], first["instances"], first["fills_ended"]) == ([390001], [390002], 1, [9000])
    again = json.loads(ok(sqlite_url, *sync).stdout)
    assert (again["new"], again["ongoing"], again["existing"], again["instances"]) == ([], [390002], [390001], 0)
    runs[1]["end_time"] = "2026-06-01T15:00:00Z"
    write(tmp_path / "runs.json", runs)
    ended = json.loads(ok(sqlite_url, *sync).stdout)
    assert (ended["ended"], ended["ongoing"], ended["instances"]) == ([390002], [], 1)
    listed = {r["run_number"]: r for r in as_json(sqlite_url, "run", "list", "-c", "rereco", "--task", "reco")}
    assert listed[390002]["status"] == "new" and listed[390002]["meta"]["end_time"] == "2026-06-01T15:00:00Z"


def test_bad_sync_arguments_are_one_line_and_write_nothing(sqlite_url: str, tmp_path: Path) -> None:
    setup(sqlite_url)
    before = dump(sqlite_url)
    bad_file = write(tmp_path / "bad.json", [{"run_number": -3}])
    for args, code in [(("--source", "file"), 2), (("--source", "oms", "--path", bad_file), 2),
                       (("--source", "file", "--path", bad_file, "--from-run", "5"), 2),
                       (("--source", "file", "--path", bad_file), 1)]:
        result = invoke(sqlite_url, "run", "sync", "-c", "rereco", *args)
        assert result.exit_code == code and "Traceback" not in result.output, (args, result.output)
    assert dump(sqlite_url) == before


def test_an_operator_closes_a_fill_once(sqlite_url: str) -> None:
    setup(sqlite_url)
    assert as_json(sqlite_url, "run", "close-fill", "-c", "rereco", "--fill", "9005", "--reason", "dump missed") == {
        "fill": 9005, "closed": True}
    again = ok(sqlite_url, "run", "close-fill", "-c", "rereco", "--fill", "9005", "--reason", "again").stdout
    assert "known to have ended already" in again
    bad = invoke(sqlite_url, "run", "close-fill", "-c", "rereco", "--fill", "9006", "--reason", " ")
    assert bad.exit_code == 1 and bad.stderr.strip() == "Error: closing a fill needs a reason"
    from ecalstate import Store

    with Store.open(sqlite_url) as store:
        assert [(f.fill, f.reason, f.actor) for f in store.ended_fills("rereco")] == [(9005, "dump missed", "tester")]


def test_two_syncs_at_once_inject_each_run_once(sqlite_url: str, tmp_path: Path) -> None:
    """Two overlapping Jenkins builds: every run and every task instance exactly once."""
    import threading

    from ecalstate import RunSpec, Store
    from ecalstate.sources.file import FileSource
    from ecalstate.sources.sync import sync

    setup(sqlite_url)
    specs = [RunSpec(n, 9000 + n % 7, {"ecal": True}) for n in range(390001, 390301)]
    results = []

    def build() -> None:
        with Store.open(sqlite_url, actor="jenkins") as store:
            results.append(sync(store, "rereco", FileSource(specs)))

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(n for r in results for n in r.new) == [s.run_number for s in specs]
    assert sum(r.instances for r in results) == len(specs)
    with Store.open(sqlite_url) as store:
        assert len(store.list_runs("rereco", None, None)) == len(specs)
        assert len(store.history("rereco", "reco", None, limit=None)) == len(specs)
        assert sorted({f.fill for f in store.ended_fills("rereco")}) == list(range(9000, 9006))


def test_a_backfill_leaves_a_run_still_being_taken_alone(sqlite_url: str, tmp_path: Path) -> None:
    setup(sqlite_url)
    ok(sqlite_url, "task", "add", "-c", "rereco", "plots")
    runs = [{"run_number": 390001, "fill": 9000, "ecal": True, "end_time": "2026-06-01T12:00:00Z"},
            {"run_number": 390002, "fill": 9000, "ecal": True, "ongoing": True}]
    path = write(tmp_path / "runs.json", runs)
    ok(sqlite_url, "run", "sync", "-c", "rereco", "--source", "file", "--path", path)
    ok(sqlite_url, "rtype", "update", "-c", "rereco", "ecal", "--add", "plots", "--backfill")
    statuses = {r["run_number"]: r["status"] for r in as_json(sqlite_url, "run", "list", "-c", "rereco",
                                                              "--task", "plots")}
    assert statuses == {390001: "new"}  # no plots (nor reco) for the run still being taken
    runs[1]["ongoing"] = False
    write(tmp_path / "runs.json", runs)
    ended = json.loads(ok(sqlite_url, "--json", "run", "sync", "-c", "rereco", "--source", "file", "--path",
                          path).stdout)
    assert (ended["ended"], ended["instances"]) == ([390002], 2)  # reco and plots, once each


def test_fill_ended_follows_the_claims_rule(tmp_path) -> None:
    """One rule for 'this fill ended': recorded by a source or an operator, or a run of a later fill exists."""
    from ecalstate import RunSpec, Store

    with Store.open(str(tmp_path / "state.db"), create=True) as store:
        store.create_campaign("prompt")
        store.inject_runs("prompt", [RunSpec(1, 10), RunSpec(2, 11)])
        assert (store.fill_ended("prompt", 10), store.fill_ended("prompt", 11)) == (True, False)
        store.close_fill("prompt", 11, reason="beam dumped")
        assert store.fill_ended("prompt", 11)
