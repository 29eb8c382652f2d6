"""The phisym-plots payload draws only what it could read (issue 23, item 8).

The payload runs as a real process on real CSV files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAYLOAD = REPO / "handlers" / "jobs" / "phisym_plots_job.py"
sys.path.insert(0, str(REPO / "handlers" / "jobs"))

import ecaljob  # noqa: E402

OVER = (3, 3)  # a crystal above the bar's range


def constant(ieta: int, iphi: int) -> float:
    """A pattern of constants across the bar's whole range (0.85 - 1.15), no two neighbours alike."""
    return round(0.86 + 0.28 * (((ieta * 37 + iphi * 11) % 29) / 28), 6)


def write_constants(path: Path, skip: Sequence[tuple[int, int]] = (), extra: Sequence[str] = ()) -> None:
    with open(path, "w") as handle:
        handle.write("ieta,iphi,ic\n")
        for ieta, iphi in ecaljob.crystals():
            if (ieta, iphi) in skip:
                continue
            value = 1.4 if (ieta, iphi) == OVER else constant(ieta, iphi)
            handle.write(f"{ieta},{iphi},{value:.6f}\n")
        handle.writelines(line + "\n" for line in extra)


def plot(tmp_path: Path, constants: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "out" / "map.png"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECALSTATE")}
    env["ECALSTATE_REPORT"] = str(tmp_path / "report.json")
    result = subprocess.run([sys.executable, str(PAYLOAD), "--constants", str(constants), "--out", str(out), *args],
                            capture_output=True, text=True, env=env, timeout=60)
    return result, out


@pytest.mark.parametrize("content, expected", [
    ("ieta,iphi,ic\n1,1,abc\n", "line 2: ic 'abc' is not a number"),
    ("ieta,iphi,ic\n1,1,nan\n", "line 2: ic 'nan' is not a finite positive number"),
    ("ieta,iphi,ic\n1,1,-1.0\n", "line 2: ic '-1.0' is not a finite positive number"),
    ("ieta,iphi,ic\n21,1,1.0\n", "line 2: crystal (21, 1) is not in the barrel"),
    ("ieta,iphi,ic\n1,x,1.0\n", "line 2: iphi 'x' is not an integer"),
    ("ieta,iphi,ic\n1,1,1.0\n1,1,1.1\n", "line 3: crystal (1, 1) twice"),
    ("ieta,iphi\n1,1\n", "no column ic"),
    ("ieta,iphi,ic\n1,1\n", "line 2: 2 fields, not 3"),
    ("ieta,iphi,ic\n1,1,1.0,7\n", "line 2: 4 fields, not 3"),
    ("", "no header"),
    ("ieta,iphi,ic\n", "no constants"),
])
def test_bad_constants_make_no_plot_and_say_why_in_one_line(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "ic.csv").write_text(content)
    result, out = plot(tmp_path, tmp_path / "ic.csv")
    assert result.returncode == 1 and not out.exists() and not out.parent.exists()
    assert result.stderr == f"bad constants {tmp_path / 'ic.csv'}: {expected}\n"
    assert expected in (tmp_path / "report.json").read_text()  # the check stage reads it as the job's failure


@pytest.mark.parametrize("args, expected", [
    (["--bogus", "x"], "unrecognized arguments: --bogus x"),
    (["--constants", "/nonexistent/ic.csv"], "cannot read constants /nonexistent/ic.csv: No such file or directory"),
])
def test_bad_arguments_make_no_plot_and_say_why_in_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    write_constants(tmp_path / "ic.csv")
    result, out = plot(tmp_path, tmp_path / "ic.csv", *args)
    assert result.returncode != 0 and not out.exists()
    assert len(result.stderr.splitlines()) == 1 and expected in result.stderr and "Traceback" not in result.stderr
