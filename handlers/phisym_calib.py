#!/usr/bin/env python3
"""phisym-calib: per-fill PhiSym inter-calibration from the energy sums of every run of the fill.

    python handlers/phisym_calib.py -c prompt submit|check|resubmit

Depends on phisym-reco. Runs are grouped by fill: the newest run leads the group
(and owns the one job), the others are merged into it.
"""

from __future__ import annotations

from pathlib import Path

from ecalstate.backends import JobSpec
from ecalstate.handler import TaskHandler
from ecalstate.results import Claim

PAYLOAD = Path(__file__).resolve().parent / "jobs" / "phisym_calib_job.py"
UPSTREAM = "phisym-reco"


class PhiSymCalib(TaskHandler):
    task = "phisym-calib"
    group_by = "fill"
    condor = {"request_memory": "1GB", "+JobFlavour": '"microcentury"'}

    def jobs(self, campaign: str, claim: Claim) -> list[JobSpec]:
        args = ["--inputs", *self.outputs(campaign, UPSTREAM, claim.runs), "--out", str(self.data_dir(campaign, claim) / "phisym_ic.csv")]
        if claim.fill is not None:
            args += ["--fill", str(claim.fill)]
        return [JobSpec(0, str(PAYLOAD), args, {"runs": ",".join(map(str, claim.runs))})]


if __name__ == "__main__":
    PhiSymCalib.main()
