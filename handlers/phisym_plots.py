#!/usr/bin/env python3
"""phisym-plots: a PNG map of the inter-calibration constants per fill (the "plots" field).

    python handlers/phisym_plots.py -c prompt submit|check|resubmit

Depends on phisym-calib; grouped by fill like it, one job per set of constants
found for the group's runs.
"""

from __future__ import annotations

from pathlib import Path

from ecalstate.backends import JobSpec
from ecalstate.handler import TaskHandler
from ecalstate.results import Claim

PAYLOAD = Path(__file__).resolve().parent / "jobs" / "phisym_plots_job.py"
UPSTREAM = "phisym-calib"


class PhiSymPlots(TaskHandler):
    task = "phisym-plots"
    group_by = "fill"
    condor = {"request_memory": "256MB", "+JobFlavour": '"espresso"'}
    version = "1.2"

    def jobs(self, campaign: str, claim: Claim) -> list[JobSpec]:
        constants = self.outputs(campaign, UPSTREAM, claim.runs)
        name = f"ic_map_fill{claim.fill}" if claim.fill is not None else f"ic_map_run{claim.run_number}"
        out = self.data_dir(campaign, claim)
        title = ["--runs", ",".join(map(str, claim.runs))]  # the plot's title names the fill and its runs
        if claim.fill is not None:
            title += ["--fill", str(claim.fill)]
        return [JobSpec(i, str(PAYLOAD), ["--constants", path, "--out", str(out / f"{name}_{i}.png"), *title])
                for i, path in enumerate(constants)]


if __name__ == "__main__":
    PhiSymPlots.main()
