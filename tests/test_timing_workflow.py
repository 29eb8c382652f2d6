"""The fourth example, ``timing`` (handlers/timing.py and its ``#!/bin/sh`` payload), on the real HTCondor pool.

docs/workflows.md runs it on the local backend (tests/test_workflow_guide.py); here it runs as production does:
per fill after phisym-reco, two jobs submitted as one cluster, run by the pool's job account with the execute node's
``/bin/sh``, ``awk`` and ``python3`` (for ``ecalstate-job``), without ecalstate. One input is not there yet at the
first attempt (an EOS copy late): both jobs fail with the payload's reason, and a resubmit recovers them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from handler_support import condor_workdir, settle

from ecalstate import RunSpec, Store
from ecalstate.backends.htcondor import CondorBackend

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "handlers"))
from timing import Timing  # noqa: E402


@pytest.fixture
def condor_work(condor_pool: Any) -> Iterator[Path]:
    with condor_workdir(condor_pool, "timing-") as folder:
        yield folder


def reconstructed(store: Store, folder: Path) -> list[Path]:
    """Campaign prompt: fill 9100's two runs reconstructed (one sums file each, as phisym-reco writes them)."""
    store.create_campaign("prompt")
    store.add_task("prompt", "phisym-reco")
    store.add_task("prompt", "timing", depends_on=["phisym-reco"], max_retries=2)
    store.update_rtype("prompt", "all", add=["phisym-reco", "timing"])
    store.inject_runs("prompt", [RunSpec(390001, 9100), RunSpec(390002, 9100)])
    store.close_fill("prompt", 9100, "beam dumped")
    files = []
    for claim in store.claim("prompt", "phisym-reco"):
        path = folder / "eos" / f"phisym_sums_{claim.run_number}.csv"
        path.parent.mkdir(exist_ok=True)
        rows = [f"{ieta},{iphi},100,{100 + ieta * 0.1 + claim.run_number % 2}" for ieta in range(1, 21)
                for iphi in range(1, 73)]
        path.write_text("ieta,iphi,hits,sum_et\n" + "\n".join(rows) + "\n")
        store.create_jobs("prompt", "phisym-reco", claim.run_number, [0])
        store.set_job_status("prompt", "phisym-reco", claim.run_number, 0, "done", fields={"output": str(path)})
        files.append(path)
    return files


def test_timing_runs_on_the_pool_and_a_resubmit_recovers_a_missing_input(condor_work: Path, tmp_path: Path) -> None:
    with Store.open(str(tmp_path / "state.db"), actor="jenkins", create=True) as store:
        files = reconstructed(store, condor_work)
        late = files[1].rename(files[1].with_suffix(".copying"))
        handler = Timing(store, CondorBackend(condor_work, template=Timing.condor))
        assert handler.submit("prompt").counts == {"claimed": 1, "merged": 1, "jobs submitted": 2}
        settle(handler, deadline=240)
        jobs = store.list_jobs("prompt", "timing", run=390002)
        assert [j.status for j in jobs] == ["failed", "failed"]
        failed = [a.reason for a in store.history("prompt", "timing", 390002, limit=None)
                  if a.entity == "job" and a.to_status == "failed"]
        assert failed == [f"exit code 3: input {files[1]} not found"] * 2

        late.rename(files[1])  # the copy arrived
        assert handler.resubmit("prompt").counts == {"jobs resubmitted": 2}
        settle(handler, deadline=240)
        assert store.instance("prompt", "timing", 390002).status == "done"
        jobs = store.list_jobs("prompt", "timing", run=390002)
        assert [(j.attempts, j.fields["crystals"], j.fields["runs"]) for j in jobs] == [
            (2, 720, "390001,390002"), (2, 720, "390001,390002")]
        # each half's mean offset, from the rows above: (E/hits - 1) * 1000 ps, averaged over the rings and runs
        assert [j.fields["offset_ps"] for j in jobs] == [5.5 + 5, 15.5 + 5]
        outputs = store.instance("prompt", "timing", 390002).outputs["output"].split(",")
        assert [Path(p).name for p in outputs] == ["timing_0.csv", "timing_1.csv"]
        assert all(Path(p).read_text().startswith("ieta,iphi,t_ps\n") for p in outputs)
        assert store.instance("prompt", "timing", 390001).status == "merged"
