#!/usr/bin/env python3
"""phisym-validate: an automatic check of each fill's inter-calibration constants before they are uploaded.

    python handlers/phisym_validate.py -c prompt submit|check|resubmit [--ic-min X] [--ic-max Y]

Depends on phisym-calib; grouped by fill like it. Its job refuses constants out of
range (or a crystal without one): the instance fails (run it with --max-retries 0: the
check is deterministic), phisym-upload is blocked for the fill and, being ordered, every
later fill waits for it; `ecalstate health` names both with their commands. An automatic
check rather than a manual gate: it runs at every Jenkins tick, day and night, within the
48 h Tier-0 gives, and says exactly which crystal it refused; a fill that needs an
expert's eye can still get a gate task (`ecalstate task add ... --gate`).
"""

from __future__ import annotations

from pathlib import Path

import click

from ecalstate.backends import JobSpec
from ecalstate.handler import TaskHandler
from ecalstate.results import Claim

PAYLOAD = Path(__file__).resolve().parent / "jobs" / "phisym_validate_job.py"
UPSTREAM = "phisym-calib"


class PhiSymValidate(TaskHandler):
    task = "phisym-validate"
    group_by = "fill"
    condor = {"request_memory": "256MB", "+JobFlavour": '"espresso"'}
    version = "1.0"
    options = [
        click.option("--ic-min", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.7,
                     show_default=True, envvar="PHISYM_IC_MIN",
                     help="The lowest constant accepted (env PHISYM_IC_MIN)."),
        click.option("--ic-max", type=click.FloatRange(1, 100, min_open=True), default=1.4, show_default=True,
                     envvar="PHISYM_IC_MAX", help="The highest constant accepted (env PHISYM_IC_MAX)."),
    ]

    def jobs(self, campaign: str, claim: Claim) -> list[JobSpec]:
        limits = ["--ic-min", str(self.option_values["ic_min"]), "--ic-max", str(self.option_values["ic_max"])]
        fill = ["--fill", str(claim.fill)] if claim.fill is not None else []
        return [JobSpec(i, str(PAYLOAD), ["--constants", path, *limits, *fill])
                for i, path in enumerate(self.outputs(campaign, UPSTREAM, claim.runs))]


if __name__ == "__main__":
    PhiSymValidate.main()
