#!/usr/bin/env python3
"""phisym-reco: per-run PhiSym reconstruction, several jobs per run, per-crystal energy sums into files.

    python handlers/phisym_reco.py -c prompt submit|check|resubmit

A run is split into slices of EVENTS_PER_JOB events (at most MAX_JOBS jobs).
A run whose metadata has ``inject_failure: N`` gets a first slice that fails
its first N attempts (the demo's transient failure, recovered by resubmit).
"""

from __future__ import annotations

from pathlib import Path

from ecalstate.backends import JobSpec
from ecalstate.handler import TaskHandler
from ecalstate.results import Claim

PAYLOAD = Path(__file__).resolve().parent / "jobs" / "phisym_reco_job.py"
EVENTS_PER_JOB = 50_000
MAX_JOBS = 6


class PhiSymReco(TaskHandler):
    task = "phisym-reco"
    condor = {"request_memory": "512MB", "+JobFlavour": '"espresso"'}
    version = "1.4"

    def jobs(self, campaign: str, claim: Claim) -> list[JobSpec]:
        events = int(claim.meta.get("nevents", 3 * EVENTS_PER_JOB))
        n = max(1, min(MAX_JOBS, -(-events // EVENTS_PER_JOB)))
        out = self.data_dir(campaign, claim)
        specs = []
        for i in range(n):
            slice_events = events // n + (1 if i < events % n else 0)
            args = ["--run", str(claim.run_number), "--job", str(i), "--events", str(slice_events),
                    "--out", str(out / f"phisym_sums_{i}.csv")]
            if i == 0 and claim.meta.get("inject_failure"):
                args += ["--fail-attempts", str(claim.meta["inject_failure"])]
            specs.append(JobSpec(i, str(PAYLOAD), args, {"events": slice_events}))
        return specs


if __name__ == "__main__":
    PhiSymReco.main()
