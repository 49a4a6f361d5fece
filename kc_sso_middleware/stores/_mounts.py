"""Which filesystem a path is on, and what that means for a SQLite store's file.

From ``/proc/self/mountinfo``: a tmpfs (gone at reboot), a network filesystem (no shared
memory for WAL mode), or a bind mount of a ``systemd-private-…`` directory, which is how
systemd's ``PrivateTmp=yes`` shows (private to the service, deleted when it stops).  The
SQLite store warns at start-up (:func:`location_warnings`); the doctor
(:mod:`kc_sso_middleware.doctor.sqlite_file`) reports the same as findings.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "NETWORK_FILESYSTEMS",
    "VOLATILE_FILESYSTEMS",
    "Mount",
    "location_warnings",
    "mount_of",
    "parse_mountinfo",
    "read_mountinfo",
]

#: filesystems on which SQLite's WAL mode (shared memory) is unsafe or unavailable
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.sshfs",
        "afs",
        "lustre",
        "davfs",
        "fuse.s3fs",
    }
)
#: filesystems in memory: empty after every reboot
VOLATILE_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of ``/proc/self/mountinfo``."""

    mount_point: str
    #: the directory of the source filesystem mounted there ("/" unless a bind mount)
    root: str
    fstype: str
    source: str

    @property
    def private_tmp(self) -> bool:
        """A directory private to one systemd service (``PrivateTmp=yes``)."""
        return "systemd-private-" in self.root


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return bytes(field, "latin-1").decode("unicode_escape") if "\\" in field else field


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        mounts.append(Mount(_unescape(fields[4]), _unescape(fields[3]), tail[0], tail[1]))
    return mounts


def read_mountinfo() -> str:
    """This process's ``/proc/self/mountinfo`` ("" where there is none)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def mount_of(path: str, mounts: Sequence[Mount]) -> Mount | None:
    """The mount ``path`` (absolute, resolved) lives on: the longest mount point above it,
    the last of several mounted on the same point."""
    best: Mount | None = None
    for mount in mounts:
        point = mount.mount_point.rstrip("/") or "/"
        inside = path == point or path.startswith(point + "/") or point == "/"
        if inside and (best is None or len(point) >= len(best.mount_point.rstrip("/") or "/")):
            best = mount
    return best


def location_warnings(path: str, mountinfo: str | None = None) -> list[str]:
    """What could lose a SQLite store at ``path`` or keep workers from sharing it.

    Empty for a file on a local persistent disk outside the temp directory.
    """
    absolute = os.path.realpath(os.path.abspath(path))
    directory = os.path.dirname(absolute)
    text = read_mountinfo() if mountinfo is None else mountinfo
    mount = mount_of(directory, parse_mountinfo(text))
    warnings = []
    if mount is not None and mount.private_tmp:
        warnings.append(
            f"it is in a private temp directory of this service ({mount.root}, systemd "
            "PrivateTmp=yes), deleted whenever the service stops: every revocation "
            "recorded before a restart is forgotten"
        )
    elif mount is not None and mount.fstype in VOLATILE_FILESYSTEMS:
        warnings.append(
            f"it is on {mount.fstype} ({mount.mount_point}), which is empty after every "
            "reboot: every revocation recorded before a reboot is forgotten"
        )
    temp = os.path.realpath(tempfile.gettempdir())
    if directory == temp or directory.startswith(temp.rstrip("/") + "/"):
        warnings.append(
            f"it is in the temp directory {temp}, whose files systemd-tmpfiles and similar "
            "cleaners delete after some days"
        )
    if mount is not None and mount.fstype in NETWORK_FILESYSTEMS:
        warnings.append(
            f"it is on a {mount.fstype} network filesystem: WAL mode needs shared memory on "
            "a local disk, and workers may miss each other's revocations"
        )
    return warnings
