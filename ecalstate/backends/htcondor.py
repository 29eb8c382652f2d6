"""HTCondor backend, through the ``htcondor2`` bindings (PyPI ``htcondor``; imported only when used).

One cluster per task instance submission; every job carries ClassAd attributes
naming it (``EcalCampaign``, ``EcalTask``, ``EcalRun``, ``EcalJobId``,
``EcalGeneration``, ``EcalAttempt``), so ``observe`` finds it again through
``Schedd.query`` (queue) and ``Schedd.history`` (left the queue). Status mapping:
1 idle; 2 running, 6 transferring and 7 suspended count as running; 4 completed:
done when ExitCode == 0, else failed; 3 removed: failed; 5 held: failed with its
HoldReason, and removed once recorded. A hold or a removal is recorded with who did it
as HTCondor reports it (the user it authenticated, or the pool) and when; a job's start
is the schedd's (``JobCurrentStartDate``). Any error talking to the schedd is a
:class:`BackendError` raised before the handler changes anything.

Every job carries a ``priority`` (JobPrio) from its instance's deadline
(:func:`ecalstate.deadlines.job_priority`: the earlier the deadline, the higher; a missed one 1, none 0), so the
schedd starts the most urgent of its idle jobs first, across tasks and campaigns. ``observe`` asks the queue once
per check whatever the number of jobs (the task's queue when it names more than 200 runs), and the history only
for jobs that left the queue, 200 runs per query.

The submit description starts from defaults, then the workflow's template
(any submit commands: memory, ``+JobFlavour``, requirements...; it may use the
per-job macros ``$(exe)``, ``$(args)``, ``$(dir)``, ``$(jid)``, ``$(attempt)``).
Jobs get only their allow-listed environment (``getenv`` stays off, a template may not set it); folders are the
handler's user's, writable by the work folder's group when it is group-writable (jobs may run as another user).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from ..errors import EcalStateError, Invalid
from ..limits import chunks
from . import Backend, BackendError, BatchJob, JobKey, NotAccepted, Observation, stderr_tail, time_text

#: attributes that identify a job; a template may not set them
KEY_ATTRS = {"EcalCampaign": "campaign", "EcalTask": "task", "EcalRun": "run", "EcalJobId": "jid",
             "EcalGeneration": "generation", "EcalAttempt": "attempt"}
PROJECTION = ["ClusterId", "ProcId", "JobStatus", "ExitCode", "ExitBySignal", "ExitSignal", "HoldReason",
              "LastHoldReason", "RemoveReason", "EnteredCurrentStatus", "JobCurrentStartDate", "JobStartDate", "Iwd",
              "Err", "JobPrio", *KEY_ATTRS]
#: how the schedd names who asked for a hold or a removal, at the end of its reason: the identity it authenticated
#: the command's client as (a pool's own holds and removals, by policy or a failure, carry none)
BY_USER = re.compile(r"\s*\(by user ([^()\s]+)\)\s*$")
DEFAULTS = {
    "universe": "vanilla",
    "executable": "$(exe)",
    "arguments": "$(args)",
    "initialdir": "$(dir)",
    "output": "$(dir)/stdout",
    "error": "$(dir)/stderr",
    "log": "$(dir)/condor.log",
    "should_transfer_files": "NO",
    "transfer_executable": "False",
    "request_cpus": "1",
    "request_memory": "256MB",
}
#: what a template may not set: the job's identity, its environment (only the allow-list, never getenv), and its
#: priority (its deadline's)
RESERVED = {"environment", "getenv", "queue", "priority", *(f"+{a}".lower() for a in KEY_ATTRS),
            *(f"my.{a}".lower() for a in KEY_ATTRS)}
RUNNING = {2, 6, 7}
#: jobs one schedd constraint names at most (a constraint of thousands of clauses is slow to parse)
CONSTRAINT_CHUNK = 200


def _bindings() -> Any:
    try:
        import htcondor2
    except ImportError as err:
        raise BackendError(f"the HTCondor backend needs the htcondor bindings (pip install htcondor): {err}") from None
    return htcondor2


def classad_string(value: str) -> str:
    """A ClassAd string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_args(args: Sequence[str]) -> str:
    """Arguments in the submit language's new syntax (each one single-quoted), with ``$`` kept literal."""
    def one(arg: str) -> str:
        return "'" + _no_line_break(arg, "an argument").replace("'", "''").replace('"', '""') + "'"
    return ('"' + " ".join(one(a) for a in args) + '"').replace("$", "$(DOLLAR)")


def environment_arg(env: Mapping[str, str]) -> str:
    """The ``environment`` command's new syntax: each value single-quoted, quotes doubled, ``$`` kept literal."""
    quoted = (f"{k}='" + _no_line_break(v, f"variable {k}").replace("'", "''").replace('"', '""') + "'"
              for k, v in env.items())
    return ('"' + " ".join(quoted) + '"').replace("$", "$(DOLLAR)")


def _no_line_break(value: str, what: str) -> str:
    """A value of the submit's item data, which cannot carry a line break (the schedd refuses the whole cluster)."""
    if "\n" in value or "\r" in value:
        raise Invalid(f"{what} holds a line break, which HTCondor cannot pass to a job: {value[:60]!r}")
    return value


class CondorBackend(Backend):
    """Submit to and reconcile with the schedd that ``CONDOR_CONFIG`` points at."""

    name = "htcondor"

    def __init__(self, workdir: str | os.PathLike[str], template: Optional[Mapping[str, str]] = None,
                 python: str = "/usr/bin/python3", job_env: Sequence[str] = ()) -> None:
        super().__init__(workdir, job_env)
        self.template = dict(template or {})
        bad = sorted(k for k in self.template if k.lower() in RESERVED)
        if bad:
            raise Invalid(f"the submit template may not set {', '.join(bad)}: ecalstate sets them")
        self.python = python

    def _schedd(self) -> Any:
        htcondor2 = _bindings()
        try:
            return htcondor2.Schedd()
        except Exception as err:  # the bindings raise HTCondorException, RuntimeError, ValueError...
            raise BackendError(f"HTCondor schedd unreachable: {_one_line(err)}") from None

    def check(self) -> None:
        self._call("query the schedd", self._schedd().query, constraint="False", projection=["ClusterId"])
        self.makedirs(self.workdir, job_writable=False)

    def _call(self, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as err:
            raise BackendError(f"HTCondor: cannot {what}: {_one_line(err)}") from None

    def submit(self, campaign: str, task: str, jobs: Sequence[BatchJob]) -> dict[JobKey, str]:
        if not jobs:
            return {}
        htcondor2 = _bindings()
        first = jobs[0].key
        description = {
            **DEFAULTS,
            **self.template,
            "environment": "$(env)",
            "+EcalCampaign": classad_string(campaign),
            "+EcalTask": classad_string(task),
            "+EcalRun": str(first.run),
            "+EcalGeneration": str(first.generation),
            "+EcalJobId": "$(jid)",
            "+EcalAttempt": "$(attempt)",
            "priority": str(int(jobs[0].priority)),  # one instance's jobs: one deadline
        }
        items = []
        try:
            for job in jobs:
                executable = self.stage(job.spec.executable)
                exe, args = ((self.python, [executable, *job.spec.args]) if job.spec.python
                             else (executable, job.spec.args))
                items.append({"exe": exe, "args": quote_args(args), "dir": str(job.folder),
                              "jid": str(job.key.jid), "attempt": str(job.key.attempt),
                              "env": environment_arg(job.env)})
            schedd = self._schedd()
            submit = htcondor2.Submit(description)
        except (OSError, EcalStateError) as err:  # nothing reached the schedd
            detail = str(err) if isinstance(err, EcalStateError) else f"HTCondor: jobs not submitted: {err}"
            raise NotAccepted(detail) from None
        # an error from here on may come after the schedd took the cluster: the outcome is unknown
        result = self._call("submit", schedd.submit, submit, itemdata=iter(items))
        cluster, proc = result.cluster(), result.first_proc()
        return {job.key: f"{cluster}.{proc + i}" for i, job in enumerate(jobs)}

    def observe(self, campaign: str, task: str, keys: Sequence[JobKey]) -> dict[JobKey, Observation]:
        if not keys:
            return {}
        # a key names a job within one work folder: the job's folder (its Iwd) tells it from another
        # installation's job with the same key in the same pool
        wanted = {key: str(self.job_dir(campaign, task, key)) for key in keys}
        schedd = self._schedd()
        base = f"EcalCampaign == {classad_string(campaign)} && EcalTask == {classad_string(task)}"
        runs = sorted({k.run for k in keys})
        found: dict[JobKey, tuple[int, Observation]] = {}
        # the queue once: the runs named (a few), or the task's whole queue (a check of thousands of queued jobs
        # must not ask the schedd once per 200 runs); the history, slow to scan, only for runs with a job not found
        queue = base if len(runs) > CONSTRAINT_CHUNK else base + " && (" + _runs(runs) + ")"
        _collect(found, wanted, self._call("query the queue", schedd.query, constraint=queue, projection=PROJECTION))
        left = sorted({k.run for k in wanted if k not in found})
        for chunk in chunks(left, CONSTRAINT_CHUNK):
            _collect(found, wanted, self._call("read the history", schedd.history, constraint=base + " && ("
                                               + _runs(chunk) + ")", projection=PROJECTION), in_queue=False)
        # a job in neither the queue nor the history (another pool? history rotated?) is left out:
        # it stays active, and health reports its instance as stuck
        return {key: seen for key, (_, seen) in found.items()}

    def remove(self, campaign: str, task: str, keys: Sequence[JobKey], reason: str) -> None:
        """``Schedd.act(Remove)`` on the queued jobs with these keys (recorded or not)."""
        if not keys:
            return
        htcondor2 = _bindings()
        schedd = self._schedd()
        base = f"EcalCampaign == {classad_string(campaign)} && EcalTask == {classad_string(task)}"
        ordered = sorted(set(keys))
        for part in chunks(ordered, CONSTRAINT_CHUNK):
            match = " || ".join(f"(EcalRun == {k.run} && EcalJobId == {k.jid} && EcalGeneration == {k.generation}"
                                f" && EcalAttempt == {k.attempt}"
                                f" && Iwd == {classad_string(str(self.job_dir(campaign, task, k)))})"
                                for k in part)
            self._call("remove jobs", schedd.act, htcondor2.JobAction.Remove, f"{base} && ({match})",
                       reason=f"ecalstate: {reason}")

    def release(self, batch_ids: Sequence[str]) -> None:
        if not batch_ids:
            return
        htcondor2 = _bindings()
        self._call("remove held jobs", self._schedd().act, htcondor2.JobAction.Remove, list(batch_ids),
                   reason="ecalstate: held job recorded as failed")

    def reprioritize(self, priorities: Mapping[str, int]) -> None:
        by_value: dict[int, list[str]] = {}
        for batch_id, priority in priorities.items():
            by_value.setdefault(int(priority), []).append(batch_id)
        schedd = self._schedd()
        for priority, ids in sorted(by_value.items()):
            for chunk in chunks(sorted(ids), CONSTRAINT_CHUNK):
                self._call("set the jobs' priority", schedd.edit, chunk, "JobPrio", str(priority))


def _runs(runs: Sequence[int]) -> str:
    """A constraint's clause naming these runs."""
    return " || ".join(f"EcalRun == {r}" for r in runs)


def _collect(found: dict[JobKey, tuple[int, Observation]], wanted: Mapping[JobKey, str], ads: Any,
             in_queue: bool = True) -> None:
    """Keep, per wanted key (and folder) not seen yet, the newest cluster's ad (the queue is read before the
    history)."""
    fresh: dict[JobKey, tuple[int, Observation]] = {}
    for ad in ads:
        try:
            key = JobKey(int(ad["EcalRun"]), int(ad["EcalJobId"]), int(ad["EcalGeneration"]), int(ad["EcalAttempt"]))
            cluster = int(ad["ClusterId"])
        except (KeyError, TypeError, ValueError):
            continue
        if key in wanted and ad.get("Iwd") == wanted[key] and key not in found \
                and cluster >= fresh.get(key, (-1, None))[0]:
            fresh[key] = (cluster, observation(dict(ad.items()), in_queue))
    found.update(fresh)


def observation(ad: Mapping[str, Any], in_queue: bool = True) -> Observation:
    """Map one job ClassAd to the store's job status (DESIGN.md's table), with the start the schedd recorded."""
    batch_id = f"{ad.get('ClusterId')}.{ad.get('ProcId')}"
    status = int(ad.get("JobStatus", 0))
    started = _time(ad.get("JobCurrentStartDate")) or _time(ad.get("JobStartDate"))
    if status == 1:
        prio = ad.get("JobPrio")
        return Observation("idle", batch_id=batch_id, priority=int(prio) if isinstance(prio, int) else None)
    if status in RUNNING:
        return Observation("running", batch_id=batch_id, started=started)
    if status == 4:
        if ad.get("ExitBySignal"):
            reason = f"killed by signal {ad.get('ExitSignal')}"
        elif ad.get("ExitCode") == 0:
            return Observation("done", batch_id=batch_id, started=started)
        else:
            reason = f"exit code {ad.get('ExitCode')}"
        last = _stderr(ad)
        return Observation("failed", reason + (f": {last}" if last else ""), batch_id, started=started)
    if status == 5:
        return Observation("failed", acted("held", ad.get("HoldReason"), ad.get("EnteredCurrentStatus")), batch_id,
                           release=in_queue, started=started)
    if status == 3:
        reason = acted("removed", ad.get("RemoveReason"), ad.get("EnteredCurrentStatus"))
        held = ad.get("LastHoldReason")
        return Observation("failed", reason + (f"; it was {acted('held', held)}" if held else ""), batch_id,
                           started=started)
    return Observation("failed", f"unknown HTCondor JobStatus {status}", batch_id, started=started)


def acted(what: str, reason: Any, when: Any = None) -> str:
    """A hold or a removal as the audit keeps it: who did it as HTCondor reports it (``HTCondor user NAME``, the
    identity the schedd authenticated the command's client as: on a pool whose clients all claim one account, that
    account whoever typed the command; else ``the pool``: a policy, a limit, a failure), when (the job's
    ``EnteredCurrentStatus``), and the reason given."""
    text = str(reason) if isinstance(reason, str) and reason.strip() else "no reason given"
    found = BY_USER.search(text)
    who = f"HTCondor user {found.group(1)}" if found else "the pool"
    moment = _time(when)
    at = f" at {moment[:19]}Z" if moment else ""
    return f"{what} by {who}{at}: {text[:found.start()] if found else text}"


def _time(value: Any) -> Optional[str]:
    """A ClassAd Unix time as the store's time text; None when the ad has none (or not a plausible one)."""
    return time_text(value) if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**10 else None


def _stderr(ad: Mapping[str, Any]) -> str:
    """The last line of the job's stderr file (``Err``, relative to its ``Iwd``, the job's folder), as the local
    backend quotes it; only a file inside that folder is read (a template may send stderr elsewhere: not quoted)."""
    err, iwd = ad.get("Err"), ad.get("Iwd")
    if not isinstance(err, str) or not err or err == "/dev/null" or not isinstance(iwd, str):
        return ""
    try:
        name = (Path(iwd) / err).relative_to(iwd)
    except ValueError:
        return ""
    return "" if ".." in name.parts else stderr_tail(Path(iwd), str(name))


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__
