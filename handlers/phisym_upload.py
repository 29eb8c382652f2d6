#!/usr/bin/env python3
"""phisym-upload: each fill's validated constants to the conditions database, in run order.

    python handlers/phisym_upload.py -c prompt submit|check|resubmit [--upload-command CMD] [--destination-tag TAG]

Depends on phisym-validate; grouped by fill and ordered (Tier-0 takes conditions in run
order): a fill is uploaded only once every earlier fill is uploaded or skipped, one at a
time. Its job packages the fill's constants with the dropBox metadata (destination
database, input and destination tag, since = the fill's first run, user text), computes
the payload's sha256 and runs the upload command with the payload's path as its last
argument: on lxplus the real uploader (--upload-command or PHISYM_UPLOAD_COMMAND, e.g.
"uploadConditions.py"), by default a stand-in that appends to WORKDIR/conddb-standin.jsonl
(--standin-log). A payload the store recorded as uploaded (a job's payload_hash, same
tag and since) is not sent again.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click

from ecalstate.backends import JobSpec
from ecalstate.errors import Invalid
from ecalstate.handler import TaskHandler
from ecalstate.results import Claim
from ecalstate.secrets import url_secret

PAYLOAD = Path(__file__).resolve().parent / "jobs" / "phisym_upload_job.py"
CALIB = "phisym-calib"
#: the stand-in's destination file, in the work folder
STANDIN_LOG = "conddb-standin.jsonl"
#: an upload command's word that carries a credential (``--password X``, ``--token=X``): refused
CREDENTIAL_OPTION = re.compile(r"--?(pass(word)?|passwd|token|secret|api[-_]?key)(=.*)?", re.I)


class PhiSymUpload(TaskHandler):
    task = "phisym-upload"
    group_by = "fill"
    ordered = True
    condor = {"request_memory": "256MB", "+JobFlavour": '"espresso"'}
    version = "1.0"
    options = [
        click.option("--upload-command", metavar="CMD", envvar="PHISYM_UPLOAD_COMMAND",
                     help="The uploader, run without a shell with the payload's path last (env PHISYM_UPLOAD_COMMAND;"
                          " default: the stand-in)."),
        click.option("--standin-log", metavar="FILE", envvar="PHISYM_STANDIN_LOG",
                     help="The stand-in's destination file (env PHISYM_STANDIN_LOG; default"
                          " WORKDIR/conddb-standin.jsonl)."),
        click.option("--destination-database", default="oracle://cms_orcon_prod/CMS_CONDITIONS", show_default=True,
                     metavar="DB", help="dropBox metadata: destinationDatabase."),
        click.option("--destination-tag", default="EcalIntercalibConstants_PhiSym_prompt", show_default=True,
                     metavar="TAG", envvar="PHISYM_DESTINATION_TAG",
                     help="dropBox metadata: the tag the payload is appended to (env PHISYM_DESTINATION_TAG)."),
        click.option("--input-tag", default="EcalIntercalibConstants_PhiSym", show_default=True, metavar="TAG",
                     help="dropBox metadata: the tag inside the payload."),
    ]

    def jobs(self, campaign: str, claim: Claim) -> list[JobSpec]:
        found = self.outputs(campaign, CALIB, claim.runs)
        if len(found) != 1:
            raise Invalid(f"run {claim.run_number}: {len(found)} sets of constants from {CALIB}, one expected")
        since = self.since(campaign, claim)
        tag = self.option_values["destination_tag"]
        where = f"fill {claim.fill}" if claim.fill is not None else "no fill"
        args = ["--constants", found[0], "--out", str(self.data_dir(campaign, claim)), "--runs",
                ",".join(map(str, claim.runs)), "--since", str(since),
                "--destination-database", self.option_values["destination_database"], "--destination-tag", tag,
                "--input-tag", self.option_values["input_tag"],
                "--user-text", f"PhiSym IC, {where}, {runs_text(claim.runs)} (campaign {campaign})",
                "--standin-log", self.option_values["standin_log"] or str(self.backend.workdir / STANDIN_LOG)]
        if self.option_values["upload_command"]:
            upload_argv(self.option_values["upload_command"])
            args += ["--upload-command", self.option_values["upload_command"]]
        if claim.fill is not None:
            args += ["--fill", str(claim.fill)]
        for digest in self.uploaded(campaign, tag, since):
            args += ["--uploaded", digest]
        return [JobSpec(0, str(PAYLOAD), args, {"since": since})]

    def since(self, campaign: str, claim: Claim) -> int:
        """The first run the constants apply to: the fill's first run with this task (a skipped one too)."""
        if claim.fill is None:
            return claim.runs[0]
        return min(r["run_number"] for r in self.store.list_runs(campaign, self.task) if r["fill"] == claim.fill)

    def uploaded(self, campaign: str, tag: str, since: int) -> list[str]:
        """The payload hashes this task's done jobs uploaded to ``tag`` from ``since``, as the store recorded them."""
        return sorted({str(j.fields["payload_hash"]) for j in self.store.list_jobs(
            campaign, self.task, status="done", all_generations=True) if j.fields.get("payload_hash")
            and j.fields.get("destination_tag") == tag and j.fields.get("since") == since})


def upload_argv(command: str) -> list[str]:
    """The upload command as the job runs it: split as a shell would, never run by one. Invalid, without quoting the
    command, when it cannot be split or carries a credential: it is in the job's arguments (``ps``), its spec and
    the claim's recorded options; the real uploader reads its credentials from its own file (``~/.netrc``)."""
    try:
        argv = shlex.split(command)
    except ValueError as err:
        raise Invalid(f"the upload command cannot be split into arguments: {err}") from None
    for number, word in enumerate(argv, 1):
        if CREDENTIAL_OPTION.fullmatch(word) or ("://" in word and url_secret(word)):
            raise Invalid(f"the upload command's argument {number} carries a credential, which ps, the job's spec and"
                          " the audit would show: let the uploader read it from its own file (~/.netrc)")
    return argv


def runs_text(runs: list[int]) -> str:
    """``runs 380001-380003`` for consecutive runs, else listed; ``run 380005`` for one."""
    if len(runs) == 1:
        return f"run {runs[0]}"
    if runs == list(range(runs[0], runs[-1] + 1)):
        return f"runs {runs[0]}-{runs[-1]}"
    return "runs " + ",".join(map(str, runs))


if __name__ == "__main__":
    PhiSymUpload.main()
