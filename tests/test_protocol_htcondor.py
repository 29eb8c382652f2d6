"""The submission protocol on the real HTCondor pool (issue 10, defects 3 and 6): jobs found by their key
in the schedd are adopted, never submitted twice; jobs of an aborted generation are removed from the queue."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from handler_support import Probe, condor_workdir, make_campaign, marker, settle, write_payload
from test_protocol import LockedOnce

from ecalstate import Store
from ecalstate.backends import BatchJob, JobKey
from ecalstate.backends.htcondor import CondorBackend
from ecalstate.handler import StageFailed

C = "prompt"


@pytest.fixture
def workdir(condor_pool: Any) -> Iterator[Path]:
    with condor_workdir(condor_pool, "protocol-") as folder:
        yield folder


def queue(workdir: Path) -> list[tuple[int, int, int]]:
    """(generation, job id, JobStatus) of this test's jobs still in the schedd's queue."""
    import htcondor2

    ads = htcondor2.Schedd().query(constraint='EcalTask == "probe"',
                                   projection=["EcalGeneration", "EcalJobId", "JobStatus", "Iwd"])
    return sorted((int(a["EcalGeneration"]), int(a["EcalJobId"]), int(a["JobStatus"])) for a in ads
                  if str(a.get("Iwd", "")).startswith(str(workdir) + "/"))


def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    stop = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < stop, "timed out"
        time.sleep(0.2)


def test_defect6_aborting_a_run_removes_its_jobs_from_the_pool(condor_pool: Any, workdir: Path, sqlite_url: str,
                                                               tmp_path: Path) -> None:
    store = Store.open(sqlite_url, actor="tester", create=True)
    make_campaign(store, [31], meta={"jobs": 2})
    handler = Probe(store, CondorBackend(workdir))
    handler.payload = write_payload(tmp_path / "payload")
    for jid in range(2):
        marker(workdir, 31, jid, "hang").touch()
    handler.submit(C)
    assert [(g, j) for g, j, s in queue(workdir) if s in (1, 2)] == [(1, 0), (1, 1)]

    store.reprocess(C, "probe", runs=[31], reason="operator: wrong conditions")
    report = handler.submit(C)
    assert report.counts == {"superseded jobs removed": 2, "claimed": 1, "merged": 0, "jobs submitted": 2}
    # generation 1 left the pool's active jobs; only generation 2 may run
    assert [g for g, _, s in queue(workdir) if s in (1, 2)] == [2, 2]
    gen1 = [j for j in store.list_jobs(C, "probe", run=31, all_generations=True) if j.generation == 1]
    assert [j.status for j in gen1] == ["failed", "failed"]

    for jid in range(2):
        marker(workdir, 31, jid, "hang").unlink()
    settle(handler, C, deadline=120)
    assert store.instance(C, "probe", 31).status == "done"
    wait_for(lambda: all(s not in (1, 2) for _, _, s in queue(workdir)))
    store.close()


class ArmingCondor(CondorBackend):
    """The real HTCondor backend; once the schedd took the jobs, the store's next write fails (locked)."""

    store: LockedOnce

    def submit(self, campaign: str, task: str, jobs: Sequence[BatchJob]) -> dict[JobKey, str]:
        ids = super().submit(campaign, task, jobs)
        self.store.armed = True
        return ids


def test_defect3_jobs_the_schedd_took_are_adopted_by_key_not_submitted_again(condor_pool: Any, workdir: Path,
                                                                            sqlite_url: str, tmp_path: Path) -> None:
    store = LockedOnce.open(sqlite_url, actor="tester", create=True)
    make_campaign(store, [41], meta={"jobs": 2})
    backend = ArmingCondor(workdir)
    backend.store = store
    handler = Probe(store, backend)
    handler.payload = write_payload(tmp_path / "payload")
    with pytest.raises(StageFailed, match="batch ids not recorded"):
        handler.submit(C)
    assert store.instance(C, "probe", 41).status == "processing"
    assert [j.batch_id for j in store.list_jobs(C, "probe", run=41)] == [None, None]

    assert handler.submit(C).counts == {"jobs adopted": 2}
    settle(handler, C, deadline=120)
    assert store.instance(C, "probe", 41).status == "done"
    import htcondor2

    ads = htcondor2.Schedd().history(constraint='EcalTask == "probe" && EcalRun == 41',
                                     projection=["ClusterId", "Iwd", "EcalGeneration"])
    mine = [a for a in ads if str(a.get("Iwd", "")).startswith(str(workdir) + "/")]
    assert len(mine) == 2 and {int(a["EcalGeneration"]) for a in mine} == {1}  # one cluster, run once
    recorded = {j.batch_id.split(".")[0] for j in store.list_jobs(C, "probe", run=41)}
    assert {str(a["ClusterId"]) for a in mine} == recorded
    store.close()
