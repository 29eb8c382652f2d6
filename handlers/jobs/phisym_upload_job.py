#!/usr/bin/env python3
"""Upload of one fill's inter-calibration constants to the conditions database, dropBox style.

Packages the constants as the payload (``<destination tag>_<since>.csv``) with its dropBox metadata beside it
(the same name ending in ``.txt``: destinationDatabase, destinationTags, inputTag, since = the fill's first run,
userText), computes the payload's sha256 and runs the upload command with the payload's path as its last argument
(on lxplus the real uploader; by default the stand-in beside this script). A payload whose hash the store already
recorded as uploaded (``--uploaded``) is not sent again. Reports the hash, the since and what the uploader said.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import ecaljob

#: the stand-in uploader, staged beside this script (``conddb_standin.py``)
STANDIN = Path(__file__).resolve().parent / "conddb_standin.py"
#: how long an upload may take
TIMEOUT = 900


def main() -> None:
    parser = ecaljob.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--constants", required=True)
    parser.add_argument("--out", required=True, help="The folder the payload and its metadata are written to.")
    parser.add_argument("--fill", type=int)
    parser.add_argument("--runs", required=True, help="The fill's runs calibrated, comma-separated (user text).")
    parser.add_argument("--since", type=int, required=True, help="The first run the constants apply to.")
    parser.add_argument("--destination-database", required=True)
    parser.add_argument("--destination-tag", required=True)
    parser.add_argument("--input-tag", required=True)
    parser.add_argument("--user-text", default="")
    parser.add_argument("--upload-command", default="", help="The uploader, split as a shell would (never run by"
                        " one); empty: the stand-in with --standin-log.")
    parser.add_argument("--standin-log", default="", help="The stand-in's destination file.")
    parser.add_argument("--uploaded", action="append", default=[], help="A payload hash already uploaded.")
    args = parser.parse_args()
    constants = ecaljob.read_constants(args.constants)
    try:
        data = Path(args.constants).read_bytes()
    except OSError as err:
        ecaljob.fail(f"cannot read constants {args.constants}: {err.strerror}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = out / f"{args.destination_tag}_{args.since}.csv"
    metadata = {"destinationDatabase": args.destination_database, "destinationTags": {args.destination_tag: {}},
                "inputTag": args.input_tag, "since": args.since, "userText": args.user_text}
    write(payload, data)
    write(payload.with_suffix(".txt"), (json.dumps(metadata, indent=1, sort_keys=True) + "\n").encode())
    digest = hashlib.sha256(data).hexdigest()
    fields = {"output": str(payload), "payload_hash": digest, "since": args.since, "fill": args.fill,
              "destination_tag": args.destination_tag, "crystals": len(constants)}
    if digest in args.uploaded:
        ecaljob.report({**fields, "upload": "already uploaded (recorded by ecalstate): nothing sent"})
        return
    command = uploader(args.upload_command, args.standin_log) + [str(payload)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        ecaljob.fail(f"upload command {command[0]} did not run: {err}")
    said = last_line(done.stdout)
    if done.returncode != 0:
        ecaljob.fail(f"upload command exited {done.returncode}: {last_line(done.stderr) or said or 'no message'}")
    ecaljob.report({**fields, "upload": said or "uploaded"})
    print(said)


def uploader(command: str, standin_log: str) -> list[str]:
    """The upload command as arguments: the one given, else the stand-in writing to ``standin_log``."""
    if command.strip():
        try:
            return shlex.split(command)
        except ValueError as err:
            ecaljob.fail(f"upload command {command!r} cannot be split: {err}")
    if not standin_log:
        ecaljob.fail("no upload command and no --standin-log for the stand-in")
    return [sys.executable, str(STANDIN), "--log", standin_log]


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


def write(path: Path, data: bytes) -> None:
    """Whole or not at all (a reader, or the uploader, never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
