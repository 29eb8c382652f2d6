"""The secrets a handler process holds, so that they never leave it through a job.

Two rules rest on this list: a batch job gets an allow-listed environment (never these variables), and a
job field whose text contains one of these values is refused (a payload that found a password somewhere
cannot push it into the store, and from there into InfluxDB).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Optional
from urllib.parse import urlsplit

#: environment variables that hold secrets, or name a file that does (``*_FILE``)
SECRET_VARIABLES = (
    "ECALSTATE_DB_PASSWORD", "ECALSTATE_INFLUX_TOKEN", "ECALSTATE_INFLUX_PASSWORD", "ECALSTATE_OMS_CLIENT_SECRET",
    "PGPASSWORD",
)
SECRET_FILE_VARIABLES = ("ECALSTATE_DB_PASSWORD_FILE", "ECALSTATE_OMS_CLIENT_SECRET_FILE", "PGPASSFILE")
#: variables a job never inherits even by name: they reach the state or a server (a job reports through its
#: JSON report, which check reads; it needs no database access of its own)
NEVER_INHERITED = frozenset({"ECALSTATE_DB", *SECRET_VARIABLES, *SECRET_FILE_VARIABLES})
#: what every job inherits from the handler's environment (plus what its workflow declares)
BASE_ENVIRONMENT = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM")
#: shorter values are not taken for secrets (an empty or tiny password would refuse every field)
MIN_SECRET_LENGTH = 6


def known_secrets(env: Optional[Mapping[str, str]] = None) -> frozenset[str]:
    """The secret values this process holds: from the variables above, the password of the ``ECALSTATE_DB`` URL,
    and the first line of the files they name (a ``.pgpass`` file gives the password of each of its lines)."""
    env = os.environ if env is None else env
    found = {env[name] for name in SECRET_VARIABLES if env.get(name)}
    try:  # a password written into the database URL itself
        found.add(urlsplit(env.get("ECALSTATE_DB", "")).password or "")
    except ValueError:
        pass
    for name in SECRET_FILE_VARIABLES:
        path = env.get(name)
        if not path:
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        if name == "PGPASSFILE":
            found.update(line.rsplit(":", 1)[-1] for line in lines if line and not line.startswith("#"))
        elif lines:
            found.add(lines[0].strip())
    return frozenset(s for s in found if len(s) >= MIN_SECRET_LENGTH)


def job_environment(declared: Iterable[str] = (), env: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The handler's variables a job may see: the base ones, ``LC_*``, and those its workflow ``declared``;
    never the database URL or a secret, even when declared."""
    env = os.environ if env is None else env
    names = {*BASE_ENVIRONMENT, *declared} - NEVER_INHERITED
    return {k: v for k, v in env.items() if (k in names or k.startswith("LC_")) and k not in NEVER_INHERITED}


def leaked(values: Iterable[object], secrets: frozenset[str]) -> bool:
    """Whether any text among ``values`` contains a secret."""
    return bool(secrets) and any(isinstance(v, str) and any(s in v for s in secrets) for v in values)


def masked(text: str, secrets: frozenset[str]) -> str:
    """``text`` with every secret replaced by ``[secret]`` (longest first: one secret may contain another)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "[secret]")
    return text
