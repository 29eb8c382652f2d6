#!/usr/bin/env python3
"""phisym-calib: per-fill PhiSym inter-calibration from the energy sums of every run of the fill.

    python handlers/phisym_calib.py -c prompt submit|check|resubmit [--global-tag TAG]

Depends on phisym-reco. Runs are grouped by fill: the newest run leads the group
(and owns the one job), the others are merged into it. Its version and global tag are
recorded with each claim (``ecalstate history``, ``ecalstate outputs``): after a new
release, ``ecalstate reprocess --task phisym-calib --version-not 2.1 --downstream``
takes every fill an older release calibrated.
"""

from __future__ import annotations

from pathlib import Path

import click

from ecalstate.backends import JobSpec
from ecalstate.handler import TaskHandler
from ecalstate.results import Claim

PAYLOAD = Path(__file__).resolve().parent / "jobs" / "phisym_calib_job.py"
UPSTREAM = "phisym-reco"


GLOBAL_TAG = "GT_PROMPT_2026_v1"


class PhiSymCalib(TaskHandler):
    task = "phisym-calib"
    group_by = "fill"
    condor = {"request_memory": "1GB", "+JobFlavour": '"microcentury"'}
    version = "2.1"
    config = {"method": "phi-symmetry, eta-ring mean"}
    options = [click.option("--global-tag", default=GLOBAL_TAG, show_default=True, metavar="TAG",
                            envvar="PHISYM_GLOBAL_TAG",
                            help="The conditions the fit starts from (env PHISYM_GLOBAL_TAG).")]

    def jobs(self, campaign: str, claim: Claim) -> list[JobSpec]:
        args = ["--inputs", *self.outputs(campaign, UPSTREAM, claim.runs),
                "--out", str(self.data_dir(campaign, claim) / "phisym_ic.csv"),
                "--global-tag", self.option_values["global_tag"]]
        if claim.fill is not None:
            args += ["--fill", str(claim.fill)]
        return [JobSpec(0, str(PAYLOAD), args, {"runs": ",".join(map(str, claim.runs))})]


if __name__ == "__main__":
    PhiSymCalib.main()
