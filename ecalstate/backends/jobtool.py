"""``ecalstate-job``: what a job's payload, in any language, runs to write its report (standard library only).

Both backends put it on every job's ``PATH`` (and name it in ``ECALSTATE_JOB_TOOL``); it runs under the
backend's Python (on HTCondor the execute node's ``python3``, without ecalstate)::

    ecalstate-job field KEY VALUE     # a text field (any text: quotes, newlines, unicode)
    ecalstate-job number KEY VALUE    # a numeric field (an integer or a finite decimal number)
    ecalstate-job output PATH         # an output file (the instance's outputs; relative to the job's folder)
    ecalstate-job plot PATH           # a plot (a PNG map is linked from the web view's instance page)
    ecalstate-job fail MESSAGE        # why the job failed (check adds it to the reason); exit non-zero after it
    ecalstate-job show                # the report as it stands

Each call changes the JSON report check reads (``ECALSTATE_REPORT``) whole or not at all: read under a lock
(calls may run at once), changed, written to a temporary file and renamed into place. A call that cannot be
honoured says why in one line on stderr, exits 1 (2 for a usage error) and leaves the report as it was: a key
that is not a plain name or that the handler records itself (``logs``, ``started``), ``output``/``plots`` set as
plain fields, a number that is not finite, a path holding a comma (outputs are comma-joined), text that is not
UTF-8, or a report that would pass :data:`MAX_REPORT_BYTES` (check does not store a larger one).
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import stat
import sys
from collections.abc import Callable
from typing import Any

#: the report's name in the job's folder
REPORT_NAME = "report.json"
#: the largest job report check reads (outputs, plot URLs, numbers: a few kB in practice)
MAX_REPORT_BYTES = 64 * 1024
#: fields the handler records itself: a report may not set them (``logs``: where readers look for the job's
#: files; ``started``: when the batch system started it)
HANDLER_FIELDS = ("logs", "started")
#: fields made by ``output`` and ``plot`` (comma-joined paths), never set as plain fields
PATH_FIELDS = {"output": "output", "plot": "plots"}
#: what a field's key may be
KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
#: the command's name on the job's PATH
COMMAND = "ecalstate-job"


class Refused(Exception):
    """A call that cannot be honoured; its text is the line on stderr."""


def _text(value: str, what: str) -> str:
    """``value`` as the command line gave it, refused unless it is UTF-8 (Python decodes argv with escapes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Refused(f"{what} is not UTF-8 text") from None
    return value


def _key(key: str) -> str:
    key = _text(key, "the key")
    if not KEY.fullmatch(key):
        raise Refused(f"invalid key {key!r}: a letter, then letters, digits, '_', '.' or '-' (at most 64)")
    if key in HANDLER_FIELDS:
        raise Refused(f"the field {key!r} is the handler's: a job's report may not set it")
    if key in PATH_FIELDS.values():
        raise Refused(f"the field {key!r} is made by '{COMMAND} {'plot' if key == 'plots' else key} PATH'")
    return key


def _number(text: str) -> float | int:
    if not NUMBER.fullmatch(text.strip()):
        raise Refused(f"not a number: {text!r}")
    value = float(text)
    if not math.isfinite(value):
        raise Refused(f"not a finite number: {text!r}")
    return int(text) if re.fullmatch(r"[+-]?\d+", text.strip()) else value


def _path(text: str) -> str:
    path = os.path.abspath(_text(text, "the path"))
    if "," in path:
        raise Refused(f"the path {path!r} holds a comma: outputs are a comma-joined list")
    if "\n" in path:
        raise Refused("the path holds a newline")
    return path


def _read(folder: int, name: str) -> dict[str, Any]:
    """The report as it stands ({} when there is none); refused when it is no regular file or no JSON object."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    except FileNotFoundError:
        return {}
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise Refused(f"{name} is a symbolic link: not changed") from None
        raise Refused(f"cannot read {name}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Refused(f"{name} is not a regular file: not changed")
        raw = handle.read(MAX_REPORT_BYTES + 1)
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("fields", {}), dict):
        raise Refused(f"{name} holds no report (a JSON object with 'fields'): not changed")
    return data


def _write(folder: int, name: str, data: dict[str, Any]) -> None:
    """Write the report whole: a fresh temporary file (never through a link left under its name), renamed."""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False).encode("utf-8")
    if len(text) > MAX_REPORT_BYTES:
        raise Refused(f"the report would hold {len(text)} bytes, more than {MAX_REPORT_BYTES} (check would not store"
                      " it): not changed")
    tmp = f".{name}.tmp{os.getpid()}"
    try:
        os.unlink(tmp, dir_fd=folder)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=folder)
    with os.fdopen(fd, "wb") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(fd)
    os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)


def change(report: str, edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply ``edit`` to the report at ``report`` under its lock, and write it whole; the report as written."""
    directory, name = os.path.split(os.path.abspath(report))
    folder = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        lock = os.open(f".{name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=folder)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = _read(folder, name)
            edit(data)
            _write(folder, name, data)
            return data
        finally:
            os.close(lock)
    finally:
        os.close(folder)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data.setdefault("fields", {})[key] = value
    return edit


def _add_path(key: str, path: str) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        fields = data.setdefault("fields", {})
        paths = [p for p in str(fields.get(key) or "").split(",") if p]
        if path not in paths:
            paths.append(path)
        fields[key] = ",".join(paths)
    return edit


def _fail(message: str) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["error"] = message
    return edit


#: each command, its arguments, and what it does (the usage text)
COMMANDS = {
    "field": (("KEY", "VALUE"), "a text field"),
    "number": (("KEY", "VALUE"), "a numeric field"),
    "output": (("PATH",), "add an output file"),
    "plot": (("PATH",), "add a plot"),
    "fail": (("MESSAGE",), "why the job failed"),
    "show": ((), "print the report"),
}


def usage() -> str:
    lines = [f"usage: {COMMAND} COMMAND ARGS  (record a job's fields, outputs and plots for check)", ""]
    lines += [f"  {COMMAND} {name} {' '.join(args)}".ljust(42) + what for name, (args, what) in COMMANDS.items()]
    return "\n".join(lines)


def parse(argv: list[str]) -> list[str]:
    """The command and its arguments, taken as they are (a value may start with '-': no option parsing)."""
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        raise SystemExit(0)
    if not argv or argv[0] not in COMMANDS:
        given = f"unknown command {argv[0]!r}" if argv else "no command"
        raise Usage(f"{given} (valid: {', '.join(COMMANDS)})")
    wanted = COMMANDS[argv[0]][0]
    if len(argv) - 1 != len(wanted):
        raise Usage(f"{argv[0]} takes {' '.join(wanted) or 'nothing'}, got {len(argv) - 1} argument"
                    f"{'' if len(argv) == 2 else 's'}")
    return argv


class Usage(Exception):
    """A call that does not say what to do (exit 2)."""


def main(argv: list[str]) -> int:
    try:
        command, *args = parse(argv)
    except Usage as err:
        print(f"{COMMAND}: {err}", file=sys.stderr)
        return 2
    report = os.environ.get("ECALSTATE_REPORT")
    if not report:
        print(f"{COMMAND}: ECALSTATE_REPORT is not set: run inside a job", file=sys.stderr)
        return 2
    try:
        if command == "show":
            directory, name = os.path.split(os.path.abspath(report))
            folder = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                print(json.dumps(_read(folder, name), sort_keys=True, ensure_ascii=False, indent=1))
            finally:
                os.close(folder)
            return 0
        if command == "field":
            edit = _set(_key(args[0]), _text(args[1], "the value"))
        elif command == "number":
            edit = _set(_key(args[0]), _number(args[1]))
        elif command == "fail":
            edit = _fail(_text(args[0], "the message"))
        else:
            edit = _add_path(PATH_FIELDS[command], _path(args[0]))
        change(report, edit)
    except Refused as err:
        print(f"{COMMAND}: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"{COMMAND}: cannot write the report {report}: {err.strerror or err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
