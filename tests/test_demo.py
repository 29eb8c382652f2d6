"""The README's demo, end to end: a simulated day of PhiSym processing on the embedded defaults."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from ecalstate import Store
from ecalstate.sources.store import RunSources

REPO = Path(__file__).resolve().parent.parent


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "handlers" / "demo.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def test_demo_runs_the_three_workflows_to_done(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = demo("--out", str(out), "--fills", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # OMS listed run 380010 of fill 9002 after that fill was calibrated: health names it with its command
    assert "problem  phisym-calib run 380010 came late: fill 9002 was processed without it" in result.stdout
    assert ('$ ecalstate reprocess -c prompt --task phisym-calib --fill 9002 --downstream --reason "..."'
            in result.stdout)
    assert "unhealthy: 0 stuck, 0 silent, 0 failing, 0 blocked; 1 problem, 0 warnings" in result.stderr
    assert "run sync -c prompt --source oms" in result.stdout and "export --out" in result.stdout
    assert "fill 9001 waits: run 380002 phisym-reco processing" in result.stdout  # its retried reconstruction
    assert "== a new release: phisym-calib 2.1 (the day was calibrated by 2.0)" in result.stdout
    assert re.search(r"changed +phisym-calib run 380003 +done -> reprocess +\(made by version 2\.0\)", result.stdout)
    # the calibration is due 48 h after its fill's dump (as OMS reported it); the latency table ends the demo
    assert "deadline 2d from fill-end, warn 12h before" in result.stdout
    latency = result.stdout.split("latency -c prompt\n", 1)[1].splitlines()[:2]
    assert latency[0].split()[:2] == ["task", "done"] and latency[1].split()[:2] == ["phisym-calib", "2"]
    assert latency[1].split()[-2:] == ["100%", "0"]
    with Store.open(str(out / "ecalstate.db")) as store:
        overview = store.overview("prompt")
        statuses = {r.run_number: r.statuses for r in overview.rows}
        # fill 9001 has 3 collision runs, fill 9002 has 4; each fill ends with a cosmics run (no task)
        assert [n for n, s in statuses.items() if not s] == [380004, 380009]
        # the runs came from the OMS source, through its mapping: recorded_lumi, l1_hlt_mode, sequence, components
        meta = {r["run_number"]: r["meta"] for r in store.list_runs("prompt")}[380001]
        assert (meta["class"], meta["global"], meta["ecal"], meta["era"]) == ("Collisions", True, True, "Run2026C")
        assert meta["lumi"] > 0 and "ongoing" not in meta
        assert RunSources(store).source_state("prompt", "oms").last_run == 380010
        assert [(f.fill, f.reason[:4]) for f in store.ended_fills("prompt")] == [(9001, "OMS:"), (9002, "OMS:")]
        # the operator skipped one run: nothing to do for it, downstream too
        assert set(statuses[380005]) == {"phisym-reco", "phisym-calib", "phisym-plots", "phisym-validate",
                                         "phisym-upload"}
        assert set(statuses[380005].values()) == {"skipped"}
        assert all(s["phisym-reco"] == "done" for n, s in statuses.items() if s and n != 380005)
        # every fill calibrated exactly once by each release, from all its runs (the skipped one left out): the day
        # by phisym-calib 2.0 (fill 9002 twice: again with its late run 380010, by the operator's command health
        # named), then again by 2.1 (reprocess --version-not 2.1 --downstream)
        claims = [a for a in store.history("prompt", task="phisym-calib", limit=None)
                  if a.entity == "task" and a.to_status == "processing"]
        assert [(a.run_number, a.generation, a.made_by.version if a.made_by else None) for a in claims] == [
            (380003, 1, "2.0"), (380008, 1, "2.0"), (380010, 1, "2.0"), (380003, 2, "2.1"), (380010, 2, "2.1")]
        assert all(a.made_by and a.made_by.config["global_tag"] == "GT_PROMPT_2026_v1" for a in claims)
        calib = {j.run_number: j.fields["runs"] for j in store.list_jobs("prompt", "phisym-calib")}
        assert calib == {380003: "380001,380002,380003", 380008: "380006,380007,380008",  # (led 9002 before 380010)
                         380010: "380006,380007,380008,380010"}
        outputs = store.outputs("prompt", "phisym-calib")
        assert {(o.run_number, o.from_run, o.generation, o.made_by.version if o.made_by else None) for o in outputs
                if o.status in ("done", "merged")} == {(380001, 380003, 2, "2.1"), (380002, 380003, 2, "2.1"),
                                                        (380003, 380003, 2, "2.1"), (380006, 380010, 2, "2.1"),
                                                        (380007, 380010, 2, "2.1"), (380008, 380010, 2, "2.1"),
                                                        (380010, 380010, 2, "2.1")}
        # downstream: the maps were drawn again from the new constants
        assert {(o.from_run, o.generation) for o in store.outputs("prompt", "phisym-plots") if o.outputs} == {
            (380003, 2), (380010, 2)}
        # the injected transient failure was recovered by resubmit
        job = store.list_jobs("prompt", "phisym-reco", run=380002)[0]
        assert (job.status, job.attempts) == ("done", 2)
        steps = [a.to_status for a in store.history("prompt", task="phisym-reco", run=380002, limit=None)
                 if a.entity == "job" and a.jid == 0 and a.to_status not in ("running", a.from_status)]
        assert steps == ["idle", "failed", "idle", "done"]
        due = {d.run_number: d for d in store.deadlines("prompt", "phisym-calib")}
        fills = {f.fill: f.dumped_at for f in store.ended_fills("prompt")}
        assert {n: (d.state, d.reference) for n, d in due.items() if d.leader_run is None} == {
            380003: ("done", fills[9001]), 380010: ("done", fills[9002])}  # counted from the dumps OMS gave
        assert 0 < (due[380003].latency_s or 0) < 48 * 3600
        # after each fill's calibration its constants were validated and uploaded, in run order: the upload log
        # lists each fill once, then fill 9002 again with its late run (new constants: a new payload); the new
        # release's constants are the same bytes, so uploading them again wrote nothing
        uploads = [json.loads(line) for line in (out / "work" / "conddb-standin.jsonl").read_text().splitlines()]
        assert [(e["since"], e["userText"]) for e in uploads] == [
            (380001, "PhiSym IC, fill 9001, runs 380001-380003 (campaign prompt)"),
            (380005, "PhiSym IC, fill 9002, runs 380006-380008 (campaign prompt)"),
            (380005, "PhiSym IC, fill 9002, runs 380006,380007,380008,380010 (campaign prompt)")]
        assert len({e["payload_hash"] for e in uploads}) == 3
        again = [j for j in store.list_jobs("prompt", "phisym-upload", all_generations=True) if j.generation == 2]
        assert {(j.run_number, j.fields["upload"]) for j in again} == {
            (380003, "already uploaded (recorded by ecalstate): nothing sent"),
            (380010, "already uploaded (recorded by ecalstate): nothing sent")}
        assert all(s.get("phisym-upload") in ("done", "merged", "skipped") for s in statuses.values() if s)
        leaders = [n for n, s in statuses.items() if s.get("phisym-plots") == "done"]
        plots = [store.instance("prompt", "phisym-plots", n).outputs["plots"] for n in leaders]
    assert plots and all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    assert "<html" in (out / "overview.html").read_text().lower()
    printed = result.stdout.split("== the conditions uploads, in the order sent", 1)[1].splitlines()[1:5]
    assert [line.split()[:2] for line in printed[:3]] == [["since", "380001"], ["since", "380005"], ["since", "380005"]]
    assert printed[3].strip() == "3 payloads; a payload sent again (same sha256) wrote nothing"
    lines = (out / "ecalstate.lp").read_text().splitlines()
    assert any(line.startswith("run,") for line in lines) and any(line.startswith("job,") for line in lines)
    assert any(line.startswith("attention,campaign=prompt,reason=late-member,run_number=380010,task=phisym-calib"
                               ' level="problem"') for line in lines)

    # a second run starts afresh in its own folder; a folder it did not make is refused
    assert demo("--out", str(out), "--fills", "1").returncode == 0
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    refused = demo("--out", str(other))
    assert refused.returncode == 1 and "was not made by the demo" in refused.stderr
    assert (other / "notes.txt").read_text() == "keep me"


def test_demo_script_is_valid_shell() -> None:
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "demo.sh")]).returncode == 0
