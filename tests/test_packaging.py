"""ecalstate installed the way users install it: a built wheel, and the sdist, each in a fresh virtualenv.

The rest of the suite runs the editable install, which imports modules that an installed package may not (an
``import importlib`` that worked only because the editable finder had imported ``importlib.util`` first). Here
the package is built (PEP 517, in isolation, as ``pip install .`` does), installed without the source tree on
the path, and its command line and the README's demo run from it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{cmd}: rc {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wheel and the sdist, built from a copy of the tracked files (no build leftovers in the work tree)."""
    out = tmp_path_factory.mktemp("dist")
    src = tmp_path_factory.mktemp("src") / "ecalstate"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if not (REPO / name).is_file():  # deleted in the work tree, not yet committed
            continue
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO / name).read_bytes())
    run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(src)], cwd=out)
    wheels, sdists = list(out.glob("ecalstate-*.whl")), list(out.glob("ecalstate-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


def fresh_env(where: Path, package: Path) -> Path:
    """A new virtualenv (no system site-packages) with ``package`` installed; its bin folder."""
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    run([str(where / "bin" / "python"), "-m", "pip", "install", "-q", str(package)], cwd=where)
    return where / "bin"


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_the_installed_package_runs_its_command_line(kind: str, dist: dict[str, Path], tmp_path: Path) -> None:
    bin_ = fresh_env(tmp_path / "venv", dist[kind])
    where = run([str(bin_ / "python"), "-c", "import ecalstate, ecalautoctrl; print(ecalstate.__file__)"],
                cwd=tmp_path).stdout
    assert str(tmp_path / "venv") in where, where  # not the source tree
    help_ = run([str(bin_ / "ecalstate"), "--help"], cwd=tmp_path).stdout
    assert "Commands:" in help_ and "reprocess" in help_
    db = str(tmp_path / "state.db")
    run([str(bin_ / "ecalstate"), "--db", db, "init"], cwd=tmp_path)
    run([str(bin_ / "ecalstate"), "--db", db, "campaign", "create", "prompt"], cwd=tmp_path)
    run([str(bin_ / "ecalstate"), "--db", db, "task", "add", "-c", "prompt", "reco"], cwd=tmp_path)
    run([str(bin_ / "ecalstate"), "--db", db, "run", "inject", "-c", "prompt", "--run", "1", "--fill", "7"],
        cwd=tmp_path)
    status = run([str(bin_ / "ecalstate"), "--db", db, "--json", "status", "-c", "prompt"], cwd=tmp_path).stdout
    assert '"reco"' in status and '"new"' in status
    # the original's command lines are console scripts of both distributions (a dot in their names)
    for script in ("ecalrunctrl.py", "ecalautomation.py"):
        assert "Usage: " + script in run([str(bin_ / script), "--help"], cwd=tmp_path).stdout
    run([str(bin_ / "ecalrunctrl.py"), "--db", db, "rtype-update", "--campaign", "prompt", "--add", "calib", "plots",
         "--type=all"], cwd=tmp_path)
    assert "calib,plots" in run([str(bin_ / "ecalrunctrl.py"), "--db", db, "rtype-list", "-c", "prompt"],
                                     cwd=tmp_path).stdout
    # every command's help, so that a module imported lazily is imported once here (the web view's templates too)
    for command in ("run", "job", "db", "export", "notify", "serve", "report", "import-influx", "health"):
        run([str(bin_ / "ecalstate"), command, "--help"], cwd=tmp_path)
    # the web view's templates and static files are package data: both kinds of distribution must carry them
    listing = run([str(bin_ / "python"), "-c", "import ecalstate.web, pathlib; root = pathlib.Path("
                   "ecalstate.web.__file__).parent; print(sorted(str(p.relative_to(root)) for p in "
                   "root.rglob('*') if p.is_file() and p.parent.name in ('templates', 'static')))"],
                  cwd=tmp_path).stdout
    web = REPO / "ecalstate" / "web"
    assert listing.strip() == str(sorted(str(p.relative_to(web)) for p in web.rglob("*")
                                         if p.is_file() and p.parent.name in ("templates", "static")))

def test_the_demo_runs_from_the_installed_wheel(dist: dict[str, Path], tmp_path: Path) -> None:
    bin_ = fresh_env(tmp_path / "venv", dist["wheel"])
    out = tmp_path / "demo"
    result = run([str(bin_ / "python"), str(REPO / "handlers" / "demo.py"), "--out", str(out), "--fills", "1"],
                 cwd=tmp_path)
    assert "healthy: nothing stuck" in result.stdout, result.stdout[-2000:]
    assert (out / "ecalstate.lp").read_text().startswith(("run,", "job,", "handler,"))
