"""A workflow declares its task's deadline in code, and its jobs carry the deadline's priority (issue 22)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import ClassVar, Optional

from handler_support import Probe, settle, write_payload

from ecalstate import RunSpec, Store
from ecalstate.backends import BatchJob, JobKey
from ecalstate.backends.local import LocalBackend
from ecalstate.deadlines import MISSED_PRIORITY, NO_DEADLINE_PRIORITY, job_priority


class Recording(LocalBackend):
    """The local backend, keeping the priority each submitted job was given."""

    priorities: dict[int, int]

    def submit(self, campaign: str, task: str, jobs: Sequence[BatchJob]) -> dict[JobKey, str]:
        self.priorities.update({j.key.run: j.priority for j in jobs})
        return super().submit(campaign, task, jobs)


class Urgent(Probe):
    deadline: ClassVar[Optional[float]] = 48 * 3600
    warn_before: ClassVar[Optional[float]] = 6 * 3600


def ended(hours_ago: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_declared_deadline_is_written_once_and_orders_the_jobs(sqlite_url: str, tmp_path: Path) -> None:
    store = Store.open(sqlite_url, actor="tester", create=True)
    store.create_campaign("prompt")
    store.add_task("prompt", "probe")
    store.update_rtype("prompt", "all", add=["probe"])
    store.inject_runs("prompt", [RunSpec(1, 1, {"jobs": 1, "end_time": ended(50)}),  # missed already
                                 RunSpec(2, 1, {"jobs": 1, "end_time": ended(1)}),
                                 RunSpec(3, 1, {"jobs": 1})])  # no end time
    backend = Recording(tmp_path / "work", slots=2)
    backend.priorities = {}
    handler = Urgent(store, backend)
    handler.payload = write_payload(tmp_path / "payload")
    report = handler.submit("prompt")
    assert report.counts["deadline declared"] == 1 and report.runs == [2, 1, 3]  # can make it, missed, no end
    task = store.list_tasks("prompt")[0]
    assert (task.deadline, task.deadline_from, task.warn_before) == (48 * 3600, "run-end", 6 * 3600)
    due = {d.run_number: d.deadline for d in store.deadlines("prompt")}
    assert backend.priorities == {1: MISSED_PRIORITY, 2: job_priority(due[2], store.clock()),
                                  3: NO_DEADLINE_PRIORITY}
    assert backend.priorities[2] > MISSED_PRIORITY
    settle(handler, "prompt")
    assert "deadline declared" not in handler.submit("prompt").counts  # already so: nothing written
    store.close()
