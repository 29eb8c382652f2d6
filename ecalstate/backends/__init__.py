"""Batch backends: where a handler's jobs run (local subprocesses, or an HTCondor pool).

A backend submits the jobs of one task instance and later observes them. It
never touches the database: the handler records what it reports, so no
transaction is ever held across batch-system I/O. Jobs are found again by
their key (run, job id, generation, attempt), not only by the batch id, so a
check can reconcile jobs even when recording their batch ids failed.

Every job attempt gets its own folder (``<workdir>/jobs/<campaign>/<task>/<run>/
g<generation>/j<jid>.a<attempt>``) holding its stdout, stderr and the JSON report
the job writes for check to read (path in the job's ``ECALSTATE_REPORT``), by hand or with the
``ecalstate-job`` command put on every job's ``PATH`` (:mod:`ecalstate.backends.jobtool`).

Jobs never run with the handler's environment: they get an allow-list (the base
variables and what the workflow declares, see :mod:`ecalstate.secrets`) plus their
``ECALSTATE_*`` job variables. The folders the backend creates belong to the
handler's user and only it writes them (0755); when the work folder itself is
group-writable (``chgrp GROUP DIR; chmod 2775 DIR``: jobs that run under another
account of that group), job attempt folders and workflow data folders are made
writable for that group. A work folder tree that another user could write is refused.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import os
import re
import shutil
import stat
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Optional

from ..errors import EcalStateError, Invalid
from ..secrets import NEVER_INHERITED, job_environment
from . import jobtool
from .jobfiles import NotRegular, attempt_dir, read_head, read_tail
from .jobtool import HANDLER_FIELDS, MAX_REPORT_BYTES, REPORT_NAME

#: backend name -> "module:class", imported on use (the HTCondor bindings are heavy and optional)
BACKENDS = {"local": ".local:LocalBackend", "htcondor": ".htcondor:CondorBackend"}
#: what a job's own variable may be named
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: the PATH a job gets when the handler has none (the report command is put before it)
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class BackendError(EcalStateError):
    """The batch system is unreachable or refused a request; the handler changed nothing because of it.

    Raised by :meth:`Backend.submit`, it means the outcome is unknown: the jobs may have been accepted.
    """


class NotAccepted(BackendError):
    """:meth:`Backend.submit` failed before the batch system took any job: submitting again cannot run one twice."""


@dataclass(frozen=True)
class JobSpec:
    """One job a handler wants run: a program, its arguments, and the fields it starts with.

    An executable given by a path is a payload, staged before it runs (:meth:`Backend.stage`); a ``.py`` one
    runs under the backend's Python, with the ``.py`` files next to it staged beside it.
    """

    jid: int
    executable: str
    args: Sequence[str] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)
    #: variables of the job's own (a handler's option values: ``ECALSTATE_OPTION_*``), beside the allow-listed
    #: ones; the job's ``ECALSTATE_*`` variables win, and a variable that reaches the state or a secret is refused
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in self.env.items():
            if not ENV_NAME.fullmatch(name) or name in NEVER_INHERITED or not isinstance(value, str):
                raise Invalid(f"job {self.jid}: {name!r} is not a variable a job may be given (a name of letters,"
                              " digits and _, a text value, never the database or a secret's variable)")

    @property
    def python(self) -> bool:
        return self.executable.endswith(".py")

    def to_dict(self) -> dict[str, Any]:
        return {"jid": self.jid, "executable": self.executable, "args": list(self.args), "fields": dict(self.fields),
                "env": dict(self.env)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        return cls(int(data["jid"]), str(data["executable"]), tuple(data["args"]), dict(data["fields"]),
                   dict(data.get("env", {})))


@dataclass(frozen=True, order=True)
class JobKey:
    """What identifies one attempt of one job in the batch system."""

    run: int
    jid: int
    generation: int
    attempt: int


@dataclass(frozen=True)
class BatchJob:
    """A job attempt ready to submit: its key, what to run, its folder and environment."""

    key: JobKey
    spec: JobSpec
    folder: Path
    env: Mapping[str, str]
    #: how urgent it is (from its instance's deadline, ``deadlines.job_priority``): HTCondor's JobPrio
    priority: int = 0

    @property
    def report(self) -> Path:
        return self.folder / REPORT_NAME


@dataclass(frozen=True)
class Observation:
    """What the batch system says about one job attempt, in the store's job statuses."""

    status: str  # idle | running | done | failed
    reason: str = ""
    batch_id: Optional[str] = None
    release: bool = False  # held: remove it from the batch system once recorded as failed
    #: when the attempt started, as the batch system says (the store's time text): a job may finish between two
    #: checks, never seen running
    started: Optional[str] = None
    #: the priority the batch system holds for a queued job (HTCondor's JobPrio); None: it keeps none
    priority: Optional[int] = None


def time_text(seconds: float) -> str:
    """A Unix time as the store writes times (UTC, microseconds)."""
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Backend(ABC):
    """Submit and observe the jobs of task instances; one folder tree under ``workdir``."""

    name: ClassVar[str]
    #: the Python that runs ``.py`` payloads and the report command (each backend sets its own)
    python: str = "/usr/bin/python3"

    def __init__(self, workdir: str | os.PathLike[str], job_env: Sequence[str] = ()) -> None:
        self.workdir = Path(workdir).absolute()
        #: the handler's variables the workflow declares for its jobs (besides the base ones)
        self.job_env = tuple(job_env)
        self._staged: dict[Path, Path] = {}
        self._tool: Optional[Path] = None

    # --- layout ------------------------------------------------------------------------

    def instance_dir(self, campaign: str, task: str, run: int, generation: int) -> Path:
        return self.workdir / "jobs" / campaign / task / str(run) / f"g{generation}"

    def job_dir(self, campaign: str, task: str, key: JobKey) -> Path:
        return self.instance_dir(campaign, task, key.run, key.generation) / f"j{key.jid}.a{key.attempt}"

    def spec_path(self, campaign: str, task: str, run: int, generation: int, jid: int) -> Path:
        """Where the spec of a job is kept, so that resubmit runs the same job again (in a folder only the
        handler's user writes: a job cannot change what is resubmitted)."""
        folder = self.makedirs(self.instance_dir(campaign, task, run, generation), job_writable=False)
        return folder / f"j{jid}.json"

    def job_group(self) -> Optional[int]:
        """The group whose jobs write job folders: the work folder's group when it is group-writable, else None."""
        try:
            info = self.workdir.stat()
        except OSError:
            return None
        return info.st_gid if info.st_mode & stat.S_IWGRP else None

    def makedirs(self, path: Path, job_writable: bool = True) -> Path:
        """Create ``path`` and its missing parents, mode 0755 (the umask does not apply); with ``job_writable``,
        ``path`` itself is also writable by :meth:`job_group` (a folder for a job's output).

        Refuses (:class:`BackendError`) a folder from the work folder down that belongs to another user or that
        every user may write: someone else could plant files the handler then trusts.
        """
        missing = []
        current = path
        while not os.path.lexists(current):
            missing.append(current)
            current = current.parent
        group = self.job_group() if job_writable else None
        for folder in reversed(missing):
            shared = group is not None and folder == path
            try:
                folder.mkdir(0o700)
                if shared:
                    os.chown(folder, -1, group)  # type: ignore[arg-type]
                folder.chmod(0o2775 if shared else 0o755)
            except FileExistsError:
                continue
            except OSError as err:
                raise BackendError(f"cannot create {folder}" + (f" for group {group}" if shared else "")
                                   + f": {err.strerror}") from None
        self._check_private(path)
        return path

    def _check_private(self, path: Path) -> None:
        """Every folder from the work folder down to ``path``: a real folder of this user, not world-writable
        (a folder outside the work folder, such as a workflow's output area, is not the backend's to judge)."""
        chain = [path, *path.parents]
        for folder in chain[:chain.index(self.workdir) + 1] if self.workdir in chain else []:
            info = folder.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & stat.S_IWOTH:
                raise BackendError(f"work folder {folder} is not a folder of this user that only it (and its job"
                                   " group) may write: another user could plant what the jobs run; use a fresh"
                                   " --workdir or fix its owner and mode (chmod o-w)")

    def batch_job(self, campaign: str, task: str, key: JobKey, spec: JobSpec, priority: int = 0) -> BatchJob:
        """A job attempt with a fresh folder and its environment: the allow-listed variables of the handler (never
        the database or a secret) and the job's own ``ECALSTATE_*`` variables; ``priority``: its urgency."""
        folder = self.makedirs(self.job_dir(campaign, task, key))
        env = {**job_environment(self.job_env), **spec.env}
        tool = self.stage_tool()
        env.update({
            "PATH": f"{tool.parent}:{env.get('PATH') or DEFAULT_PATH}", "ECALSTATE_JOB_TOOL": str(tool),
            "ECALSTATE_CAMPAIGN": campaign, "ECALSTATE_TASK": task, "ECALSTATE_RUN": str(key.run),
            "ECALSTATE_JOB_ID": str(key.jid), "ECALSTATE_GENERATION": str(key.generation),
            "ECALSTATE_ATTEMPT": str(key.attempt), "ECALSTATE_REPORT": str(folder / REPORT_NAME),
        })
        return BatchJob(key, spec, folder, env, priority)

    def stage_tool(self) -> Path:
        """The report command ``ecalstate-job`` (:mod:`ecalstate.backends.jobtool`), staged like a payload with a
        ``#!`` line naming the backend's Python: on every job's PATH, where the jobs run."""
        if self._tool is None:
            source = Path(jobtool.__file__).read_bytes()
            folder = self._stage_contents("ecalstate-job", {jobtool.COMMAND: b"#!" + self.python.encode() + b"\n"
                                                            + source})
            self._tool = folder / jobtool.COMMAND
        return self._tool

    def stage(self, executable: str) -> str:
        """Copy a payload under ``workdir/bin/<folder>-<hash of content>`` and return the copy's path.

        Any executable given by a path is a payload (a ``.py`` one travels with the ``.py`` files beside
        it, so payloads may share a helper module); a bare command name (``sh``) is run as it is. Jobs run
        the copy: a payload edited while jobs run does not change them, and the copy is visible where the
        jobs run. The copy is written into a private temporary folder and renamed into place; an existing
        copy is used only if it is this user's, writable by no one else, and holds the same bytes.
        """
        if os.sep not in executable:
            return executable
        source = Path(executable).absolute()
        if source in self._staged:
            return str(self._staged[source])
        if not source.is_file():
            raise Invalid(f"job payload {source} does not exist")
        files = sorted(p for p in source.parent.glob("*.py") if p.is_file()) if source.suffix == ".py" else [source]
        target = self._stage_contents(source.parent.name, {path.name: path.read_bytes() for path in files})
        self._staged[source] = target / source.name
        return str(target / source.name)

    def _stage_contents(self, prefix: str, contents: Mapping[str, bytes]) -> Path:
        """The folder ``workdir/bin/<prefix>-<hash of contents>`` holding these files (mode 755), staged now unless
        this user already staged exactly them."""
        digest = hashlib.sha256()
        for name, data in contents.items():
            digest.update(name.encode() + b"\0" + data + b"\0")
        bin_dir = self.makedirs(self.workdir / "bin", job_writable=False)
        target = bin_dir / f"{prefix}-{digest.hexdigest()[:12]}"
        if not os.path.lexists(target):
            tmp = Path(tempfile.mkdtemp(prefix=".stage-", dir=bin_dir))  # 0700: no one else writes into it
            for name, data in contents.items():
                fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.chmod(tmp / name, 0o755)
            tmp.chmod(0o755)
            try:
                tmp.rename(target)
            except OSError:  # another submitter staged the same content first
                shutil.rmtree(tmp)
        _check_staged(target, contents)
        return target

    # --- the batch system ----------------------------------------------------------------

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`BackendError` unless jobs can be submitted now (called before claiming)."""

    @contextmanager
    def lock(self, campaign: str, task: str, run: int) -> Iterator[None]:
        """Hold the run's submission lock: one stage at a time looks its jobs up, submits or removes them.

        A lock file in the shared work folder, so it ends with the process holding it (a killed build
        never leaves it taken).
        """
        folder = self.makedirs(self.workdir / "jobs" / campaign / task / str(run), job_writable=False)
        fd = os.open(folder / ".submit.lock", os.O_CREAT | os.O_RDONLY, 0o600)  # no one else may hold it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @abstractmethod
    def submit(self, campaign: str, task: str, jobs: Sequence[BatchJob]) -> dict[JobKey, str]:
        """Submit the jobs of one task instance; return each job's batch id.

        Raises :class:`NotAccepted` when no job was taken, :class:`BackendError` when that is not known.
        """

    @abstractmethod
    def observe(self, campaign: str, task: str, keys: Sequence[JobKey]) -> dict[JobKey, Observation]:
        """What the batch system says about these job attempts; keys it cannot judge are left out."""

    def find(self, campaign: str, task: str, keys: Sequence[JobKey]) -> dict[JobKey, str]:
        """The batch ids of the job attempts the batch system already has, by key (to adopt, not resubmit)."""
        return {k: o.batch_id for k, o in self.observe(campaign, task, keys).items() if o.batch_id}

    @abstractmethod
    def remove(self, campaign: str, task: str, keys: Sequence[JobKey], reason: str) -> None:
        """Remove these job attempts from the batch system, by key, whether or not they were recorded."""

    def release(self, batch_ids: Sequence[str]) -> None:
        """Free what the batch system still holds for jobs recorded as failed (held jobs)."""

    def reprioritize(self, priorities: Mapping[str, int]) -> None:
        """Give queued jobs (by batch id) a new priority: a deadline passed while they waited. A batch system
        without priorities (the local runner) has nothing to change."""


def _check_staged(target: Path, contents: Mapping[str, bytes]) -> None:
    """Refuse a staged copy that is not exactly what this user staged (planted, or changed since)."""
    for path in [target, *(target / name for name in contents)]:
        try:
            info = path.lstat()
            kind = stat.S_ISDIR if path == target else stat.S_ISREG
            same = kind(info.st_mode) and info.st_uid == os.geteuid() \
                and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) \
                and (path == target or path.read_bytes() == contents[path.name])
        except OSError:
            same = False
        if not same:
            raise BackendError(f"staged payload {path} is not the copy this user staged (another owner, writable by"
                               " others, or changed): refusing to run it; remove that folder and submit again")


def last_line(folder: int, name: str = "stderr", limit: int = 200) -> str:
    """The last non-empty line of the job file ``name`` of the open attempt folder ``folder`` (at most ``limit``
    characters; only the file's end is read), or "": what a failed job's reason quotes.

    A file the job replaced by anything but a regular file of its folder is quoted as the note saying so
    ("stderr is a symbolic link"), never read.
    """
    try:
        data, _ = read_tail(folder, name, 8192)
    except NotRegular as err:
        return str(err)[:limit]
    except OSError:
        return ""
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


def stderr_tail(folder: Path, name: str = "stderr", limit: int = 200) -> str:
    """:func:`last_line` of the job's stderr (``name``) in its attempt folder ``folder``, opened without following
    a link (a folder swapped for one is quoted as a note too)."""
    try:
        with attempt_dir(folder) as fd:
            return last_line(fd, name, limit)
    except NotRegular as err:
        return str(err)[:limit]
    except OSError:
        return ""


@dataclass(frozen=True)
class JobReport:
    """What check takes from the JSON report a job left in its folder."""

    #: the report's ``fields`` (None: none reported)
    fields: Optional[dict[str, Any]] = None
    #: the job's ``error``, or why its report was not used
    error: str = ""
    #: the report is not a regular file of the job's folder (a link, a pipe...): its job fails, ``error`` says why
    refused: bool = False


def read_report(folder: Path) -> JobReport:
    """The JSON report a job left in its attempt folder ``folder`` (a missing or broken report is not an error).

    A report larger than :data:`MAX_REPORT_BYTES` is not stored: its job gets an error saying so instead
    (the store, the export and the dashboards carry job fields; a 30 MB one froze the export). A report that is not
    a regular file of the folder is refused (:attr:`JobReport.refused`), never read: a link would make check store
    what it points to, a named pipe would stop check for good. The ``logs`` and ``started`` fields are the handler's:
    a report cannot set them (they would send log readers elsewhere, or move the job's start).
    """
    try:
        with attempt_dir(folder) as fd:
            raw = read_head(fd, REPORT_NAME, MAX_REPORT_BYTES + 1)
    except NotRegular as err:
        return JobReport(error=str(err), refused=True)
    except OSError:
        return JobReport()
    if len(raw) > MAX_REPORT_BYTES:
        return JobReport(error=f"job report too large: more than {MAX_REPORT_BYTES} bytes, its fields were not stored")
    try:
        data = json.loads(raw)
    except ValueError:
        return JobReport()
    if not isinstance(data, dict):
        return JobReport()
    fields = data.get("fields") if isinstance(data.get("fields"), dict) else None
    error = str(data.get("error") or "")
    for name in HANDLER_FIELDS:
        if fields is not None and name in fields:
            fields = {k: v for k, v in fields.items() if k != name}
            ignored = f"the report's field {name!r} was ignored (the handler records it)"
            error = "; ".join(filter(None, [error, ignored]))
    return JobReport(fields, error)


def make_backend(name: str, workdir: str | os.PathLike[str], **options: Any) -> Backend:
    """Instantiate backend ``name`` (its module is imported only now)."""
    try:
        module_name, attr = BACKENDS[name].split(":")
    except KeyError:
        raise Invalid(f"unknown backend {name!r} (valid: {', '.join(BACKENDS)})") from None
    cls = getattr(importlib.import_module(module_name, __name__), attr)
    backend: Backend = cls(workdir, **options)
    return backend
