#!/usr/bin/env python3
"""timing: an ECAL timing calibration per LHC fill, from phisym-reco's energy sums, in two jobs (the barrel's halves).

    python handlers/timing.py -c prompt submit|check|resubmit

Depends on phisym-reco; the runs of a fill are grouped (the newest leads and owns the jobs, the others are merged
into it). The payload is a shell script, handlers/jobs/timing_job.sh, that reports each half's mean time offset with
ecalstate-job. docs/workflows.md writes this workflow step by step, from an empty file to production.
"""

from __future__ import annotations

from pathlib import Path

import click

from ecalstate.backends import JobSpec
from ecalstate.handler import TaskHandler
from ecalstate.results import Claim

PAYLOAD = Path(__file__).resolve().parent / "jobs" / "timing_job.sh"
UPSTREAM = "phisym-reco"


class Timing(TaskHandler):
    task = "timing"
    group_by = "fill"
    version = "1.0"
    condor = {"request_memory": "256MB", "+JobFlavour": '"espresso"'}
    options = [click.option("--min-hits", type=click.IntRange(min=1), default=10, show_default=True,
                            help="Leave out crystals with fewer hits (jobs: ECALSTATE_OPTION_MIN_HITS).")]

    def jobs(self, campaign: str, claim: Claim) -> list[JobSpec]:
        inputs = self.outputs(campaign, UPSTREAM, claim.runs)  # every run's sums (a merged run: its leader's)
        out = self.data_dir(campaign, claim)  # per generation: a reprocessing never overwrites
        runs = ",".join(map(str, claim.runs))
        return [JobSpec(half, str(PAYLOAD), ["--half", str(half), "--out", str(out / f"timing_{half}.csv"), *inputs],
                        {"runs": runs}) for half in (0, 1)]


if __name__ == "__main__":
    Timing.main()
