"""Jobs can't forge state or steal secrets (issue 11, items 3-4), on the local backend and the real HTCondor pool.

The attacks are real: a payload that looks for the database and the passwords in its environment, uses them and
reports them as fields; another Unix user (``ecaltest``) who plants a payload under the staging name the handler
will use, and who tries to write into job folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import dump, invoke
from handler_support import Probe, condor_workdir, make_campaign, settle

from ecalstate import Store
from ecalstate.backends import Backend, BackendError, JobKey, JobSpec
from ecalstate.backends.htcondor import CondorBackend
from ecalstate.backends.local import LocalBackend
from ecalstate.handler import StageReport
from ecalstate.results import Claim

SECRETS = {"ECALSTATE_DB_PASSWORD": "db-pass-0451-xyz", "PGPASSWORD": "pg-pass-0451-xyz",
           "ECALSTATE_INFLUX_TOKEN": "influx-token-0451-xyz"}
ECALSTATE = str(Path(sys.executable).parent / "ecalstate")

#: a payload that takes whatever it finds: the database (to claim runs under a Jenkins actor) and the secrets
THIEF = f'''\
import json, os, subprocess
env = dict(os.environ)
json.dump(env, open("seen_env.json", "w"))
if "ECALSTATE_DB" in env:
    subprocess.run([{ECALSTATE!r}, "--actor", "jenkins-prompt-42", "set", "-c", "prompt", "--task", "probe",
                    "--runs", "2", "skipped", "--reason", "forged"], env=env)
stolen = {{k: v for k, v in env.items() if any(w in k for w in ("PASS", "TOKEN", "ECALSTATE_DB"))}}
json.dump({{"fields": {{"stolen": json.dumps(stolen), "declared": env.get("ECAL_DECLARED", "")}}}},
          open(env["ECALSTATE_REPORT"], "w"))
'''


class Thief(Probe):
    job_env = ("ECAL_DECLARED", "ECALSTATE_DB", "PGPASSWORD")  # naming the database or a secret gives nothing

    def jobs(self, campaign: str, claim: Claim) -> list[JobSpec]:
        return [JobSpec(0, str(self.payload))]


def payload(folder: Path, text: str, name: str = "job.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    (folder / name).chmod(0o755)
    return folder / name


def staged_name(backend: Backend, script: Path) -> Path:
    """The staging folder the handler will use, computed as an attacker can (names and contents are readable)."""
    files = sorted(script.parent.glob("*.py")) if script.suffix == ".py" else [script]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return backend.workdir / "bin" / f"{script.parent.name}-{digest.hexdigest()[:12]}"


def as_user(user: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", "sh", "-c", command], capture_output=True, text=True)


def wait_for(handler: Probe, what: str, deadline: float = 60) -> StageReport:
    stop = time.monotonic() + deadline
    while True:
        report = handler.check("prompt")
        if report.counts.get(what) or time.monotonic() > stop:
            return report
        time.sleep(0.2)


@pytest.fixture
def open_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder every user can reach (tmp_path is private to root): where the work folder lives."""
    folder = Path(tmp_path / "shared")
    folder.mkdir()
    for path in (tmp_path, folder):
        path.chmod(0o755)
    yield folder


def test_a_local_job_gets_no_database_and_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = str(tmp_path / "state.db")
    for name, value in {**SECRETS, "ECALSTATE_DB": db, "ECAL_DECLARED": "proxy-path"}.items():
        monkeypatch.setenv(name, value)
    store = Store.open(db, actor="tester", create=True)
    make_campaign(store, [1, 2], meta={"jobs": 1})
    handler = Thief(store, LocalBackend(tmp_path / "work", slots=2, job_env=Thief.job_env))
    handler.payload = payload(tmp_path / "thief", THIEF)
    handler.submit("prompt", limit=1)
    settle(handler)
    job = store.list_jobs("prompt", "probe", run=1)[0]
    seen = json.loads((handler.backend.job_dir("prompt", "probe", JobKey(1, 0, 1, 1)) / "seen_env.json").read_text())
    assert not {"ECALSTATE_DB", *SECRETS} & set(seen)
    assert seen["ECAL_DECLARED"] == "proxy-path" and seen["ECALSTATE_RUN"] == "1" and "PATH" in seen
    assert (job.status, job.fields["stolen"], job.fields["declared"]) == ("done", "{}", "proxy-path")
    assert store.instance("prompt", "probe", 2).status == "new"  # no forged transition
    assert not [a for a in store.history("prompt", limit=None) if a.actor == "jenkins-prompt-42"]
    store.close()


def test_a_job_report_carrying_a_secret_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even when a payload finds a password elsewhere (a readable file), check refuses to store it: the job fails
    without its fields (its result is not used; the retry limit bounds a payload that leaks every time)."""
    secret_file = tmp_path / "db.secret"
    secret_file.write_text(SECRETS["ECALSTATE_DB_PASSWORD"] + "\n")
    monkeypatch.setenv("ECALSTATE_DB_PASSWORD_FILE", str(secret_file))
    db = str(tmp_path / "state.db")
    store = Store.open(db, actor="tester", create=True)
    make_campaign(store, [1], meta={"jobs": 1})
    handler = Thief(store, LocalBackend(tmp_path / "work"))
    handler.payload = payload(tmp_path / "finder", f'''\
import json, os
found = open({str(secret_file)!r}).read().strip()
json.dump({{"fields": {{"output": "/eos/out.root", "note": {{"nested": "pw=" + found}}}}}},
          open(os.environ["ECALSTATE_REPORT"], "w"))
''')
    handler.submit("prompt")
    report = wait_for(handler, "failed")
    assert report.counts.get("failed") == 1
    job = store.list_jobs("prompt", "probe", run=1)[0]
    assert job.status == "failed" and "note" not in job.fields and "output" not in job.fields
    reason = [a.reason for a in store.history("prompt", run=1, entity="job")][-1]
    assert reason.startswith("job report refused: its fields carry a secret")
    store.close()
    assert not [line for line in dump(db) if SECRETS["ECALSTATE_DB_PASSWORD"] in line]


def test_job_set_with_a_secret_field_is_refused(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    with Store.open(db, actor="tester", create=True) as store:
        make_campaign(store, [1], meta={"jobs": 1})
        store.claim("prompt", "probe", 1, jobs=lambda claim: [(0, {})])
    before = dump(db)
    secret = SECRETS["PGPASSWORD"]
    result = invoke(db, "job", "set", "-c", "prompt", "--task", "probe", "--run", "1", "--job", "0", "running",
                    "--field", f"token=x{secret}y", env={"PGPASSWORD": secret})
    assert result.exit_code == 1 and "secret" in result.stderr and secret not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert dump(db) == before


def test_another_user_cannot_plant_a_payload_or_write_job_folders(open_dir: Path, other_user: str) -> None:
    backend = LocalBackend(open_dir / "work", slots=1)
    backend.check()
    script = payload(open_dir / "payload", "#!/bin/sh\necho genuine\n", "job.sh")
    target = staged_name(backend, script)
    planted = as_user(other_user, f"mkdir -p {target} && printf '#!/bin/sh\\necho planted\\n' > {target}/job.sh"
                                  f" && chmod 755 {target}/job.sh")
    assert planted.returncode != 0 and not target.exists()
    key = JobKey(1, 0, 1, 1)
    job = backend.batch_job("c", "t", key, JobSpec(0, str(script)))
    backend.submit("c", "t", [job])
    stop = time.monotonic() + 30
    while backend.observe("c", "t", [key])[key].status != "done" and time.monotonic() < stop:
        time.sleep(0.05)
    assert (job.folder / "stdout").read_text() == "genuine\n"
    for folder in (job.folder, backend.workdir, backend.workdir / "bin", backend.instance_dir("c", "t", 1, 1)):
        tried = as_user(other_user, f"echo forged > {folder}/report.json")
        assert tried.returncode != 0, folder


def test_a_staged_copy_someone_else_owns_or_changed_is_refused(tmp_path: Path, other_user: str) -> None:
    import pwd

    backend = LocalBackend(tmp_path / "work")
    script = payload(tmp_path / "payload", "print('genuine')\n")
    staged = Path(backend.stage(str(script)))
    fresh = LocalBackend(tmp_path / "work")  # a later stage, which did not stage it itself
    staged.write_text("print('changed')\n")
    with pytest.raises(BackendError, match="not the copy this user staged"):
        fresh.stage(str(script))
    staged.write_text("print('genuine')\n")
    assert fresh.stage(str(script)) == str(staged)
    os.chown(staged.parent, pwd.getpwnam(other_user).pw_uid, -1)
    with pytest.raises(BackendError, match="not the copy this user staged"):
        LocalBackend(tmp_path / "work").stage(str(script))


def test_a_work_folder_others_may_write_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    folder.chmod(0o1777)
    for backend in (LocalBackend(folder), CondorBackend(folder)):
        with pytest.raises(BackendError, match="another user could plant"):
            backend.makedirs(backend.workdir / "bin", job_writable=False)


@pytest.fixture
def condor_dir(condor_pool: Any) -> Iterator[Path]:
    with condor_workdir(condor_pool, "isolation-") as folder:
        yield folder


def test_condor_jobs_get_no_secret_and_others_cannot_plant_payloads(
        condor_dir: Path, other_user: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**SECRETS, "ECALSTATE_DB": str(tmp_path / "x.db"), "ECAL_DECLARED": "proxy"}.items():
        monkeypatch.setenv(name, value)
    backend = CondorBackend(condor_dir, template={"request_memory": "64MB"}, job_env=["ECAL_DECLARED", "PGPASSWORD"])
    backend.check()
    assert not condor_dir.stat().st_mode & 0o002  # the pool's jobs group writes it, other users do not
    script = payload(tmp_path / "payload", "#!/bin/sh\necho genuine; env > seen_env\n", "job.sh")
    target = staged_name(backend, script)
    planted = as_user(other_user, f"mkdir -p {target} && printf '#!/bin/sh\\necho planted\\n' > {target}/job.sh")
    assert planted.returncode != 0 and not target.exists()
    key = JobKey(7, 0, 1, 1)
    job = backend.batch_job("prompt", "iso", key, JobSpec(0, str(script)))
    assert as_user(other_user, f"echo forged > {job.folder}/report.json").returncode != 0
    backend.submit("prompt", "iso", [job])
    stop = time.monotonic() + 90
    while backend.observe("prompt", "iso", [key]).get(key, None) is None or \
            backend.observe("prompt", "iso", [key])[key].status not in ("done", "failed"):
        assert time.monotonic() < stop, "the job did not finish"
        time.sleep(0.5)
    assert backend.observe("prompt", "iso", [key])[key].status == "done"
    assert (job.folder / "stdout").read_text() == "genuine\n"
    seen = dict(line.split("=", 1) for line in (job.folder / "seen_env").read_text().splitlines() if "=" in line)
    assert not {"ECALSTATE_DB", *SECRETS} & set(seen) and seen["ECAL_DECLARED"] == "proxy"


def test_a_secret_in_a_failed_jobs_stderr_is_masked_in_its_reason(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The reason of a failed job quotes its stderr; a secret the job printed there is masked before it is stored."""
    secret_file = tmp_path / "db.secret"
    secret_file.write_text(SECRETS["ECALSTATE_DB_PASSWORD"] + "\n")
    monkeypatch.setenv("ECALSTATE_DB_PASSWORD_FILE", str(secret_file))
    db = str(tmp_path / "state.db")
    store = Store.open(db, actor="tester", create=True)
    make_campaign(store, [1], meta={"jobs": 1}, retries=0)
    handler = Thief(store, LocalBackend(tmp_path / "work"))
    handler.payload = payload(tmp_path / "printer", f'''\
import sys
print("cannot connect with password " + open({str(secret_file)!r}).read().strip(), file=sys.stderr)
sys.exit(1)
''')
    handler.submit("prompt")
    settle(handler)
    reasons = [a.reason for a in store.history("prompt", task="probe", run=1, limit=None) if a.to_status == "failed"]
    assert reasons[0] == "exit code 1: cannot connect with password [secret]"
    store.close()
    assert not [line for line in dump(db) if SECRETS["ECALSTATE_DB_PASSWORD"] in line]
