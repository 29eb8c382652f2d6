"""The secrets a process holds: where they may come from, and how they never leave it.

Two rules rest on the list of variables: a batch job gets an allow-listed environment (never these variables),
and a job field whose text contains one of these values is refused (a payload that found a password somewhere
cannot push it into the store, and from there into InfluxDB). The other rules: a URL never carries a secret
(:func:`url_secret`; it is shown in ``ps``, shell history, build logs and error messages, which all go through
:func:`redact_url`), and a file holding a secret is used only when no one else may read it
(:func:`read_secret_file`, as libpq treats ``~/.pgpass``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from typing import Any, Optional
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from .errors import Invalid

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


#: URL query keys whose value is a secret: libpq's ``password`` and ``sslpassword`` (SQLAlchemy hands every query
#: parameter to the driver); ``passfile`` only names a file, which :func:`check_private` holds to the same rule
SECRET_URL_KEYS = frozenset({"password", "sslpassword"})
#: query keys whose values messages may show (anything else is shown as ``***``: InfluxDB's ``p``, tokens...)
SHOWN_URL_KEYS = frozenset({"sslmode", "connect_timeout", "application_name", "target_session_attrs", "host",
                            "hostaddr", "port", "dbname", "user", "passfile", "service", "sslrootcert", "sslcert",
                            "sslkey", "gssencmode", "channel_binding", "mode", "cache", "uri", "u"})


def url_secret(url: str) -> Optional[str]:
    """Where ``url`` carries a password (its user part, or which query parameter), or None: the one check of every
    URL that names a database, whether it comes from ``--db``, ``ECALSTATE_DB``, a handler or the library.

    A plain path is no URL and carries none. The database part of a server URL and every query value are also
    searched for ``password=`` (libpq reads a connection string wherever one may stand)."""
    if "://" not in url:
        return None
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            return "its user part (user:password@)"
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:  # not a URL this can read: the database layer refuses it by itself
        return None
    for key, value in query:
        if key.strip().lower() in SECRET_URL_KEYS:
            return f"its query parameter {key!r}"
        if "password=" in value.lower().replace(" ", ""):
            return f"the value of its query parameter {key!r}"
    if not parts.scheme.startswith("sqlite") and "password=" in unquote(parts.path).lower().replace(" ", ""):
        return "its database name"
    return None


def url_secret_refusal(url: str) -> Optional[str]:
    """Why ``url`` is refused (:func:`url_secret`), as one line that never quotes it; None: it may be used."""
    where = url_secret(url)
    if where is None:
        return None
    return (f"the URL holds a password ({where}), which the command line, build logs and error messages show: give "
            "the URL without it, and the password in the file named by ECALSTATE_DB_PASSWORD_FILE, in "
            "ECALSTATE_DB_PASSWORD, or in ~/.pgpass")


def redact_url(url: str) -> str:
    """``url`` for a message or a log: its password as ``***``, and the value of every query parameter but the
    few known to be harmless (:data:`SHOWN_URL_KEYS`) as ``***``. A plain path is returned as it is."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@" + netloc.rsplit("@", 1)[1]
        query = [(k, v if k.strip().lower() in SHOWN_URL_KEYS else "***")
                 for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    except ValueError:
        return url.split("://", 1)[0] + "://<unreadable URL>"
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    return shown + ("?" + urlencode(query, safe="/*:", quote_via=quote) if query else "")


def check_private(fd: int, path: str, what: str) -> None:
    """Refuse a secret's file (open as ``fd``) that the group or others may read or write: the rule libpq applies
    to ``~/.pgpass`` (which it skips with a warning), here a clear refusal. A pipe (``--token-file <(...)``) is
    private by its mode too."""
    info = os.fstat(fd)
    if info.st_mode & 0o077:
        raise Invalid(f"{what} {path} may be read by other users (mode {stat.S_IMODE(info.st_mode):04o}): "
                      f"make it private with `chmod 600 {path}`")


def read_secret_file(path: str, what: str) -> str:
    """The first line of the file at ``path`` (without its line end), once :func:`check_private` accepts it;
    ``what`` names the file in messages, which never quote its content."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as handle:
            check_private(handle.fileno(), path, what)
            return handle.readline().rstrip("\r\n")
    except OSError as err:
        raise Invalid(f"cannot read {what} {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise Invalid(f"{what} {path} is not UTF-8 text") from None


def check_private_path(path: str, what: str) -> None:
    """:func:`check_private` for a file another program reads (libpq's password file); a missing file passes."""
    try:
        fd = os.open(os.path.expanduser(path), os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return  # libpq skips a password file it cannot open, and so do we
    try:
        check_private(fd, path, what)
    finally:
        os.close(fd)


def no_password_in_argument(ctx: Any, param: Any, value: Optional[str]) -> Optional[str]:
    """``--db`` callback (of ``ecalstate`` and of every handler's command line): a URL carrying a password anywhere
    is refused as a usage error, whether it comes from the command line (``ps``, shell history, Jenkins' console)
    or ``ECALSTATE_DB`` (every child inherits it, and error messages would quote it); the store refuses it too (one
    check: :func:`url_secret_refusal`)."""
    refusal = url_secret_refusal(value) if value else None
    if refusal is not None:
        import click

        raise click.BadParameter(refusal, ctx, param)
    return value
