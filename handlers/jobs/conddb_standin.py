#!/usr/bin/env python3
"""A stand-in for the CMS conditions uploader (``uploadConditions.py`` on lxplus), for the demo and the tests.

    conddb_standin.py --log FILE PAYLOAD

Reads the dropBox metadata written beside PAYLOAD (the same name ending in ``.txt``: destinationDatabase,
destinationTags, inputTag, since, userText), computes the payload's sha256 and appends one JSON line with both to
FILE, under a lock: a payload whose hash the log holds already is refused and nothing is written ("uploading the
same payload again writes nothing"), also when two uploads of it run at once. Exit 0 when uploaded or already
there (the payload is in the destination either way), 2 on metadata or a payload it cannot read (one line on
stderr). Standard library only: it runs wherever the upload job runs.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

#: the dropBox metadata keys and the type each must have
METADATA = {"destinationDatabase": str, "destinationTags": dict, "inputTag": str, "since": int, "userText": str}


def refuse(message: str) -> NoReturn:
    print(f"conddb-standin: {message}", file=sys.stderr)
    sys.exit(2)


def metadata_of(payload: Path) -> dict[str, Any]:
    """The metadata beside ``payload``, checked."""
    path = payload.with_suffix(".txt")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        refuse(f"no readable metadata {path}: {err}")
    if not isinstance(data, dict):
        refuse(f"metadata {path} is not a JSON object")
    for key, kind in METADATA.items():
        value = data.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or not value:
            refuse(f"metadata {path}: {key} missing or not a {kind.__name__}")
    if data["since"] < 1:
        refuse(f"metadata {path}: since {data['since']} is not a run number")
    return data


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        refuse(f"cannot read payload {path}: {err.strerror}")
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", required=True, help="The destination: one JSON line per payload uploaded.")
    parser.add_argument("payload")
    args = parser.parse_args()
    payload = Path(args.payload)
    metadata = metadata_of(payload)
    digest = sha256(payload)
    log = Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # check and append as one: two uploads of a payload write it once
        handle.seek(0)
        for line in handle:
            if json.loads(line).get("payload_hash") == digest:
                print(f"payload {digest[:12]} already uploaded: nothing written (since {metadata['since']})")
                return
        entry = {"payload_hash": digest, "payload": payload.name, "uploaded_at": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **{k: metadata[k] for k in METADATA}}
        handle.write(json.dumps(entry, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    tags = ",".join(metadata["destinationTags"])
    print(f"uploaded payload {digest[:12]} to {tags} since {metadata['since']}")


if __name__ == "__main__":
    main()
