"""Which file system holds a path, and whether SQLite may trust it.

SQLite's locking and its WAL index (a shared-memory file) need one host's local
disk. On AFS, EOS, NFS, SMB/CIFS, Lustre, GPFS, CephFS or any FUSE mount, two
hosts (two Jenkins agents) writing the same file can corrupt it, and a single
host is not safe either where byte-range locks or shared mmap are emulated.
The mount is found in ``/proc/self/mountinfo``: the entry with the longest
mount point that is a path prefix of the file's real path (the last one wins
when mounts are stacked on the same point).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

MOUNTINFO = "/proc/self/mountinfo"

#: file-system types SQLite must not be used on, and what to call them in messages
NETWORK_FS: dict[str, str] = {
    "afs": "AFS", "openafs": "AFS",
    "nfs": "NFS", "nfs4": "NFS",
    "cifs": "SMB/CIFS", "smb3": "SMB/CIFS", "smbfs": "SMB/CIFS",
    "lustre": "Lustre", "gpfs": "GPFS", "ceph": "CephFS",
    "glusterfs": "GlusterFS", "beegfs": "BeeGFS", "9p": "9P",
    "fuse": "FUSE", "fuseblk": "FUSE",
}
#: FUSE subtypes with a more telling name than "FUSE" (``fuse.<subtype>`` in the mount table)
FUSE_NAMES = {"eosxd": "EOS", "eos": "EOS", "ceph-fuse": "CephFS", "glusterfs": "GlusterFS", "sshfs": "SSHFS"}

_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of the mount table: where, which file system type, from what source."""

    mount_point: str
    fstype: str
    source: str

    @property
    def network_kind(self) -> Optional[str]:
        """A name for the kind of network/FUSE file system this is, or None for a local one."""
        base, _, subtype = self.fstype.partition(".")
        if base in ("fuse", "fuseblk") and subtype:
            return FUSE_NAMES.get(subtype, f"FUSE ({subtype})")
        if base == "fuse" and self.source.lower().startswith("eos"):  # eosxd mounts as plain "fuse", source "eosxd"
            return "EOS"
        return NETWORK_FS.get(base)


def _unescape(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in paths as octal escapes."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse ``/proc/<pid>/mountinfo`` text (see proc(5)); malformed lines are skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if len(fields) < sep + 3:
            continue
        mounts.append(Mount(_unescape(fields[4]), fields[sep + 1], _unescape(fields[sep + 2])))
    return mounts


def read_mounts(mountinfo: str = MOUNTINFO) -> list[Mount]:
    """The mount table of this process (empty when it cannot be read, e.g. not on Linux)."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as fh:
            return parse_mountinfo(fh.read())
    except OSError:
        return []


def real_path(path: str) -> str:
    """``path`` with every symbolic link resolved (also when the file itself does not exist yet)."""
    return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def mount_of(path: str, mounts: list[Mount]) -> Optional[Mount]:
    """The mount holding ``path``: the longest mount point that is a whole-component prefix of its real path."""
    target = real_path(path)
    best: Optional[Mount] = None
    for mount in mounts:
        point = mount.mount_point
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = mount
    return best


def network_mount(path: str, mounts: Optional[list[Mount]] = None) -> Optional[Mount]:
    """The network or FUSE mount holding ``path``, or None when it is on a local file system."""
    mount = mount_of(path, read_mounts() if mounts is None else mounts)
    return mount if mount is not None and mount.network_kind else None
