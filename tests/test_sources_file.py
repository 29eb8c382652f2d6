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
