"""The SQLite path guard: network and FUSE mounts are found in the mount table and refused.

Three layers, all real: a lxplus-like mount table parsed from tests/data (AFS, EOS, NFS, SMB,
Lustre, GPFS, CephFS, CVMFS, stacked mounts, escaped names), this machine's own
/proc/self/mountinfo (a local path must pass), and a real FUSE mount made with bindfs, through
the library and through the ``ecalstate`` command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers_plugin import skip_or_fail

from ecalstate import Store
from ecalstate.db import DatabaseError
from ecalstate.paths import Mount, mount_of, network_mount, parse_mountinfo, read_mounts

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def lxplus() -> list[Mount]:
    return parse_mountinfo((DATA / "mountinfo_lxplus.txt").read_text())


@pytest.mark.parametrize(("path", "kind"), [
    ("/afs/cern.ch/user/e/ecal/state.db", "AFS"),
    ("/eos/user/e/ecal/state.db", "EOS"),
    ("/eos/cms/store/group/ecal/state.db", "EOS"),
    ("/cvmfs/cms.cern.ch/state.db", "FUSE"),
    ("/home/shared/ecal/state.db", "NFS"),
    ("/mnt/win share/state.db", "SMB/CIFS"),
    ("/mnt/old/state.db", "SMB/CIFS"),
    ("/lustre/ecal/state.db", "Lustre"),
    ("/gpfs/data/ecal/state.db", "GPFS"),
    ("/cephfs/ecal/state.db", "CephFS"),
])
def test_network_mounts_of_a_real_table_are_recognised(lxplus: list[Mount], path: str, kind: str) -> None:
    mount = network_mount(path, lxplus)
    assert mount is not None and mount.network_kind == kind


@pytest.mark.parametrize(("path", "mount_point", "fstype"), [
    ("/data/ecal/state.db", "/data", "ext4"),
    ("/tmp/state.db", "/tmp", "tmpfs"),
    ("/afsx/state.db", "/afsx", "ext4"),            # a name that starts like /afs is not under /afs
    ("/gpfs/other/state.db", "/", "xfs"),           # /gpfs itself is not a mount, /gpfs/data is
    ("/data/remote/state.db", "/data/remote", "ext4"),  # stacked mounts: the last one (ext4 over sshfs) wins
    ("/state.db", "/", "xfs"),
])
def test_local_paths_take_the_longest_mount_point(lxplus: list[Mount], path: str, mount_point: str,
                                                   fstype: str) -> None:
    mount = mount_of(path, lxplus)
    assert mount is not None and (mount.mount_point, mount.fstype) == (mount_point, fstype)
    assert network_mount(path, lxplus) is None


def test_mount_table_parsing_unescapes_names_and_skips_garbage() -> None:
    mounts = parse_mountinfo((DATA / "mountinfo_lxplus.txt").read_text() + "not a mount line\n\n")
    assert len(mounts) == 18
    assert Mount("/mnt/win share", "cifs", "//winserver/calib") in mounts
    assert mounts[0] == Mount("/", "xfs", "/dev/mapper/vg-root")


def test_symlinks_are_resolved_before_looking_up_the_mount(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    (tmp_path / "link").symlink_to(remote)
    table = [Mount("/", "ext4", "/dev/vda"), Mount(str(remote), "nfs", "filer:/x")]
    mount = network_mount(str(tmp_path / "link" / "state.db"), table)
    assert mount is not None and mount.mount_point == str(remote)


def test_this_machine_local_temp_dir_passes(tmp_path: Path) -> None:
    mounts = read_mounts()
    assert mounts, "/proc/self/mountinfo should be readable on Linux"
    here = mount_of(str(tmp_path / "state.db"), mounts)
    assert here is not None and here.network_kind is None
    with Store.open(str(tmp_path / "state.db"), create=True) as store:
        store.create_campaign("prompt")
        assert [c.name for c in store.list_campaigns()] == ["prompt"]


@pytest.fixture
def fuse_dir(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(mount point, backing folder) of a real FUSE mount (bindfs), unmounted afterwards."""
    if shutil.which("bindfs") is None:
        skip_or_fail("bindfs not installed (Debian package bindfs): run scripts/install-deps.sh")
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        skip_or_fail("a FUSE mount needs root and /dev/fuse")
    backing, point = tmp_path / "backing", tmp_path / "fuse"
    backing.mkdir()
    point.mkdir()
    done = subprocess.run(["bindfs", str(backing), str(point)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        skip_or_fail(f"bindfs could not mount: {done.stderr.strip()}")
    try:
        yield point, backing
    finally:
        subprocess.run(["umount", str(point)], check=False, timeout=30)
        if point.is_mount():
            subprocess.run(["umount", "-l", str(point)], check=False, timeout=30)


def test_a_real_fuse_mount_is_refused_with_a_pointer_to_postgresql(fuse_dir: tuple[Path, Path]) -> None:
    point, backing = fuse_dir
    mount = network_mount(str(point / "state.db"))
    assert mount is not None and mount.fstype == "fuse" and mount.mount_point == str(point)
    with pytest.raises(DatabaseError, match=r"is on FUSE .*postgresql\+psycopg://.*--allow-network-fs"):
        Store.open(str(point / "state.db"), create=True)
    assert list(backing.iterdir()) == []  # refused before SQLite created anything


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from ecalstate.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=60)


def test_cli_refuses_a_fuse_mount_and_allow_network_fs_overrides_with_a_warning(
    fuse_dir: tuple[Path, Path]
) -> None:
    point, backing = fuse_dir
    db = str(point / "state.db")
    refused = _cli("--db", db, "init")
    assert refused.returncode == 1
    assert "is on FUSE" in refused.stderr and "PostgreSQL" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert list(backing.iterdir()) == []

    allowed = _cli("--allow-network-fs", "--db", db, "init")
    assert allowed.returncode == 0, allowed.stderr
    assert "warning:" in allowed.stderr and "--allow-network-fs" in allowed.stderr
    assert (backing / "state.db").exists()
    again = _cli("--allow-network-fs", "--db", db, "campaign", "create", "prompt")
    assert again.returncode == 0, again.stderr
    assert _cli("--db", db, "campaign", "list").returncode == 1  # an existing file is refused just the same
