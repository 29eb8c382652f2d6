"""The original's database names (``ecal_prompt_v1``, ``ecal_rerecos_v1``) as ecalstate stores.

Scripts written for ecalautoctrl pass an InfluxDB database name as ``--db`` or ``dbname=``. Here such a name maps
to a store through the *databases file*, lines ``NAME = URL|PATH``::

    # /etc/ecalstate/databases.conf
    ecal_prompt_v1  = postgresql+psycopg://ecal@dbod-ecal.example:6600/ecal_prompt
    ecal_rerecos_v1 = /data/ecal/rerecos.db      # a relative path is relative to this file's folder

The file is ``$ECALSTATE_DATABASES`` when set (and then only it), else the first of
``${XDG_CONFIG_HOME:-~/.config}/ecalstate/databases.conf`` and ``/etc/ecalstate/databases.conf`` that names the
name. A value is a *name* when it is letters, digits, ``_`` and ``-`` only; anything with ``://`` is a URL, and
anything else (``state.db``, ``./ecal_prompt_v1``) a path, used as it is. An unknown name is refused with one line
naming where it was looked for: never taken for a new file in the current folder.

The file decides where the automation writes, so one that another user may change is refused (as ssh refuses its
configuration), and a URL in it must hold no password (the store refuses those anywhere).
"""

from __future__ import annotations

import os
import pwd
import re
import stat
from pathlib import Path

from ..errors import Invalid, NotFound
from ..secrets import url_secret_refusal

#: the environment variable naming the databases file
DATABASES_ENV = "ECALSTATE_DATABASES"
SYSTEM_FILE = "/etc/ecalstate/databases.conf"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_LINE = re.compile(r"\s*([^\s=#]+)\s*=\s*(.*?)\s*")


def is_name(dbname: str) -> bool:
    """True when ``dbname`` is a database name (looked up in the databases file), not a path or a URL."""
    return _NAME.fullmatch(dbname) is not None


def user_file() -> Path:
    """The databases file of the user: ``${XDG_CONFIG_HOME:-~/.config}/ecalstate/databases.conf``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "ecalstate" / "databases.conf"


def resolve_dbname(dbname: str) -> str:
    """The store ``dbname`` names: the target of a database name, or the path or URL itself."""
    if not dbname.strip():
        raise Invalid("no database given: give a database name, a path or a URL")
    if "://" in dbname or not is_name(dbname):
        return dbname
    chosen = os.environ.get(DATABASES_ENV)
    if chosen:
        if not os.path.exists(chosen):
            raise NotFound(f"unknown database name {dbname!r}: {DATABASES_ENV} names {chosen}, which does not exist")
        target = read_databases(Path(chosen)).get(dbname)
        if target is None:
            raise NotFound(f"unknown database name {dbname!r}: not in {chosen} ({DATABASES_ENV}): add a line "
                           f"'{dbname} = URL|PATH' there, or give a path (./{dbname}) or a URL")
        return target
    files = [user_file(), Path(SYSTEM_FILE)]
    for path in files:
        if path.exists():
            target = read_databases(path).get(dbname)
            if target is not None:
                return target
    looked = " nor ".join(f"{p}{'' if p.exists() else ' (missing)'}" for p in files)
    raise NotFound(f"unknown database name {dbname!r}: neither {looked} names it ({DATABASES_ENV} may name another "
                   f"file): add a line '{dbname} = URL|PATH' to one, or give a path (./{dbname}) or a URL")


def read_databases(path: Path) -> dict[str, str]:
    """The names of one databases file and their targets (relative paths made relative to the file's folder)."""
    try:
        with open(path, encoding="utf-8") as handle:
            _check_owner(handle.fileno(), path)
            lines = handle.read().splitlines()
    except OSError as err:
        raise Invalid(f"cannot read the databases file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise Invalid(f"the databases file {path} is not UTF-8 text") from None
    names: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = _uncomment(line)
        if not text.strip():
            continue
        where = f"the databases file {path}, line {number}"
        match = _LINE.fullmatch(text)
        if match is None:
            raise Invalid(f"{where}: expected NAME = URL|PATH")
        name, target = match.groups()
        if not is_name(name):
            raise Invalid(f"{where}: {name!r} is not a database name (letters, digits, _ and -)")
        if name in names:
            raise Invalid(f"{where}: {name} is named twice")
        if not target:
            raise Invalid(f"{where}: {name} names no database")
        refusal = url_secret_refusal(target)
        if refusal is not None:  # the line is never quoted: it holds the password
            raise Invalid(f"{where}: {refusal}")
        names[name] = _target(target, path)
    return names


def _uncomment(line: str) -> str:
    """The line without its comment: ``#`` at its start or after a blank (a URL may hold ``#`` elsewhere)."""
    cut = re.search(r"(^|\s)#", line)
    return line if cut is None else line[:cut.start()]


def _target(value: str, path: Path) -> str:
    if "://" in value:
        return value
    expanded = os.path.expanduser(value)
    return expanded if os.path.isabs(expanded) else os.path.join(os.path.dirname(os.path.abspath(path)), expanded)


def _check_owner(fd: int, path: Path) -> None:
    """Refuse a databases file that another user may change: it decides which store the automation writes."""
    info = os.fstat(fd)
    if info.st_uid not in (os.geteuid(), 0):
        raise Invalid(f"the databases file {path} belongs to {_user(info.st_uid)}, not to you or root: it decides "
                      "where the automation writes")
    if info.st_mode & 0o022:
        raise Invalid(f"the databases file {path} may be changed by other users (mode "
                      f"{stat.S_IMODE(info.st_mode):04o}): `chmod go-w {path}`")


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
