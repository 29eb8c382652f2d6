"""Batch backends: where a handler's jobs run (local subprocesses, or an HTCondor pool).

A backend submits the jobs of one task instance and later observes them. It
never touches the database: the handler records what it reports, so no
transaction is ever held across batch-system I/O. Jobs are found again by
their key (run, job id, generation, attempt), not only by the batch id, so a
check can reconcile jobs even when recording their batch ids failed.

Every job attempt gets its own folder (``<workdir>/jobs/<campaign>/<task>/<run>/
g<generation>/j<jid>.a<attempt>``) holding its stdout, stderr and the JSON report
the job writes for check to read (path in the job's ``ECALSTATE_REPORT``).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from ..errors import EcalStateError, Invalid

#: backend name -> "module:class", imported on use (the HTCondor bindings are heavy and optional)
BACKENDS = {"local": ".local:LocalBackend", "htcondor": ".htcondor:CondorBackend"}
REPORT_NAME = "report.json"
#: the largest job report check reads (outputs, plot URLs, numbers: a few kB in practice)
MAX_REPORT_BYTES = 64 * 1024


class BackendError(EcalStateError):
    """The batch system is unreachable or refused a request; the handler changed nothing because of it.

    Raised by :meth:`Backend.submit`, it means the outcome is unknown: the jobs may have been accepted.
    """


class NotAccepted(BackendError):
    """:meth:`Backend.submit` failed before the batch system took any job: submitting again cannot run one twice."""


@dataclass(frozen=True)
class JobSpec:
    """One job a handler wants run: a program, its arguments, and the fields it starts with.

    A ``.py`` executable is a payload: it runs under the backend's Python, and the
    ``.py`` files next to it are staged with it (so payloads may share a helper module).
    """

    jid: int
    executable: str
    args: Sequence[str] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def python(self) -> bool:
        return self.executable.endswith(".py")

    def to_dict(self) -> dict[str, Any]:
        return {"jid": self.jid, "executable": self.executable, "args": list(self.args), "fields": dict(self.fields)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        return cls(int(data["jid"]), str(data["executable"]), tuple(data["args"]), dict(data["fields"]))


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


class Backend(ABC):
    """Submit and observe the jobs of task instances; one folder tree under ``workdir``."""

    name: ClassVar[str]
    #: mode of every folder the backend creates (jobs may run as another user)
    dir_mode: ClassVar[int] = 0o755

    def __init__(self, workdir: str | os.PathLike[str]) -> None:
        self.workdir = Path(workdir).absolute()
        self._staged: dict[Path, Path] = {}

    # --- layout ------------------------------------------------------------------------

    def instance_dir(self, campaign: str, task: str, run: int, generation: int) -> Path:
        return self.workdir / "jobs" / campaign / task / str(run) / f"g{generation}"

    def job_dir(self, campaign: str, task: str, key: JobKey) -> Path:
        return self.instance_dir(campaign, task, key.run, key.generation) / f"j{key.jid}.a{key.attempt}"

    def spec_path(self, campaign: str, task: str, run: int, generation: int, jid: int) -> Path:
        """Where the spec of a job is kept, so that resubmit runs the same job again."""
        return self.instance_dir(campaign, task, run, generation) / f"j{jid}.json"

    def makedirs(self, path: Path) -> Path:
        """Create ``path`` and its missing parents with :attr:`dir_mode` (the umask does not apply)."""
        missing = []
        current = path
        while not current.exists():
            missing.append(current)
            current = current.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            except OSError as err:
                raise BackendError(f"cannot create {folder}: {err.strerror}") from None
            folder.chmod(self.dir_mode)
        return path

    def batch_job(self, campaign: str, task: str, key: JobKey, spec: JobSpec) -> BatchJob:
        """A job attempt with a fresh folder and the environment every payload gets."""
        folder = self.makedirs(self.job_dir(campaign, task, key))
        env = {
            "ECALSTATE_CAMPAIGN": campaign, "ECALSTATE_TASK": task, "ECALSTATE_RUN": str(key.run),
            "ECALSTATE_JOB_ID": str(key.jid), "ECALSTATE_GENERATION": str(key.generation),
            "ECALSTATE_ATTEMPT": str(key.attempt), "ECALSTATE_REPORT": str(folder / REPORT_NAME),
        }
        return BatchJob(key, spec, folder, env)

    def stage(self, executable: str) -> str:
        """Copy a Python payload and its sibling ``.py`` files under ``workdir/bin`` (content-addressed).

        Jobs then run the copy: a payload edited while jobs run does not change them,
        and the copy is visible where the jobs run (the workdir is shared with the pool).
        Other executables are used as they are.
        """
        source = Path(executable).absolute()
        if source.suffix != ".py":
            return executable
        if source in self._staged:
            return str(self._staged[source])
        if not source.is_file():
            raise Invalid(f"job payload {source} does not exist")
        files = sorted(p for p in source.parent.glob("*.py") if p.is_file())
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        target = self.workdir / "bin" / f"{source.parent.name}-{digest.hexdigest()[:12]}"
        if not target.exists():
            self.makedirs(target.parent)
            tmp = Path(tempfile.mkdtemp(prefix=".stage-", dir=target.parent))
            for path in files:
                shutil.copy2(path, tmp / path.name)
                (tmp / path.name).chmod(0o755)
            tmp.chmod(self.dir_mode)
            try:
                tmp.rename(target)
            except OSError:  # another submitter staged the same content first
                shutil.rmtree(tmp)
        self._staged[source] = target / source.name
        return str(target / source.name)

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
        folder = self.makedirs(self.workdir / "jobs" / campaign / task / str(run))
        fd = os.open(folder / ".submit.lock", os.O_CREAT | os.O_RDONLY, 0o666)  # flock needs no write access
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


def read_report(folder: Path) -> dict[str, Any]:
    """The JSON report a job left in its folder, or {} (a missing or broken report is not an error).

    A report larger than :data:`MAX_REPORT_BYTES` is not stored: its job gets an error saying so instead
    (the store, the export and the dashboards carry job fields; a 30 MB one froze the export).
    """
    try:
        with open(folder / REPORT_NAME, "rb") as handle:
            raw = handle.read(MAX_REPORT_BYTES + 1)
    except OSError:
        return {}
    if len(raw) > MAX_REPORT_BYTES:
        return {"error": f"job report too large: more than {MAX_REPORT_BYTES} bytes, its fields were not stored"}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def make_backend(name: str, workdir: str | os.PathLike[str], **options: Any) -> Backend:
    """Instantiate backend ``name`` (its module is imported only now)."""
    try:
        module_name, attr = BACKENDS[name].split(":")
    except KeyError:
        raise Invalid(f"unknown backend {name!r} (valid: {', '.join(BACKENDS)})") from None
    cls = getattr(importlib.import_module(module_name, __name__), attr)
    backend: Backend = cls(workdir, **options)
    return backend
