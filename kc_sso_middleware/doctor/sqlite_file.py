"""Where a SQLite store's file is, who can write it, and whether every worker can share it.

Pure decisions (:func:`sqlite_findings`) over what :func:`inspect_sqlite` sees: the file and
its directory (existence, owner, mode, access for this user) and the filesystem it lives on,
from ``/proc/self/mountinfo`` (a tmpfs, a network filesystem, or a bind mount of a
``systemd-private-…`` directory, which is how systemd's ``PrivateTmp=yes`` shows).  Nothing
is created: a file made by this check would belong to the check's user.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from urllib.parse import unquote

from .._variables import default_store_url
from ..errors import ConfigurationError
from ..settings import Settings
from ..stores._mounts import NETWORK_FILESYSTEMS, Mount, mount_of, parse_mountinfo, read_mountinfo
from ..stores.options import parse_store_url
from .report import Finding, Severity

__all__ = [
    "NETWORK_FILESYSTEMS",
    "Mount",
    "SQLiteLocation",
    "inspect_sqlite",
    "mount_of",
    "parse_mountinfo",
    "sqlite_findings",
    "sqlite_path",
]


@dataclass(frozen=True, slots=True)
class SQLiteLocation:
    """Where a SQLite store's file is and who can use it (looked at, never created)."""

    path: str
    is_default: bool
    exists: bool
    directory: str
    directory_exists: bool
    #: whether this process may create files in the directory / write the file
    directory_writable: bool
    file_writable: bool
    owner: str | None
    #: permission bits of the file (or of the directory when there is no file)
    mode: int | None
    user: str
    mount: Mount | None


def _user_name(uid: int | None) -> str:
    if uid is None:
        return "this user"
    try:
        import pwd  # POSIX only

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def inspect_sqlite(path: str, settings: Settings, mountinfo: str | None = None) -> SQLiteLocation:
    absolute = os.path.realpath(os.path.abspath(path))
    directory = os.path.dirname(absolute)
    existing = directory
    while not os.path.isdir(existing) and existing != os.path.dirname(existing):
        existing = os.path.dirname(existing)  # the nearest directory that exists
    exists = os.path.exists(absolute)
    owner = mode = None
    with contextlib.suppress(OSError):
        info = os.stat(absolute if exists else existing)
        owner, mode = _user_name(info.st_uid), stat.S_IMODE(info.st_mode)
    if mountinfo is None:
        mountinfo = read_mountinfo()
    return SQLiteLocation(
        path=absolute,
        is_default=settings.store == default_store_url(),
        exists=exists,
        directory=directory,
        directory_exists=os.path.isdir(directory),
        directory_writable=os.access(existing, os.W_OK | os.X_OK),
        file_writable=exists and os.access(absolute, os.R_OK | os.W_OK),
        owner=owner,
        mode=mode,
        user=_user_name(os.geteuid() if hasattr(os, "geteuid") else None),
        mount=mount_of(directory, parse_mountinfo(mountinfo)),
    )


def _writers(mode: int | None, owner: str | None) -> str:
    if mode is None:
        return "unknown"
    if mode & 0o002:
        return "every user"
    if mode & 0o020:
        return f"{owner} and its group"
    return f"{owner} only"


def sqlite_findings(location: SQLiteLocation) -> list[Finding]:
    """Where the file is, whether every worker can share it, what could lose it."""
    mount = location.mount
    on = f" on {mount.fstype} ({mount.mount_point})" if mount else ""
    default = " (the default: KC_SSO_STORE is not set)" if location.is_default else ""
    if location.exists:
        state = (
            f"exists, owned by {location.owner}, mode {location.mode:04o}, writable by "
            f"{_writers(location.mode, location.owner)}"
            if location.mode is not None
            else "exists"
        )
    else:
        state = (
            "does not exist yet: the first worker creates it, owned by that worker's user and "
            "with its umask (this check does not create it)"
        )
    findings = [
        Finding(
            "sqlite-location",
            Severity.INFO,
            f"SQLite file {location.path}{default}{on}: {state}.  Every worker of this host "
            "shares it only if all of them see the same directory (the same /tmp: no "
            "systemd PrivateTmp, the same container or volume) and run as users who can "
            "write the file, its -wal and -shm files and the directory.",
            details={
                "path": location.path,
                "default": location.is_default,
                "exists": location.exists,
                "owner": location.owner,
                "mode": None if location.mode is None else f"{location.mode:04o}",
                "checked_as": location.user,
                "filesystem": mount.fstype if mount else None,
                "mount_point": mount.mount_point if mount else None,
                "mount_root": mount.root if mount else None,
            },
        )
    ]
    if (location.exists and not location.file_writable) or not location.directory_writable:
        what = (
            f"the file (owned by {location.owner}, mode {location.mode:04o})"
            if location.exists and not location.file_writable and location.mode is not None
            else f"the directory {location.directory}"
        )
        findings.append(
            Finding(
                "sqlite-not-writable",
                Severity.PROBLEM,
                f"User {location.user} cannot write {what}: a worker running as this user "
                "fails at start-up, and back-channel logouts cannot be stored.",
                "Run every worker as one user that owns the file and its directory, or set "
                "KC_SSO_STORE=sqlite:////var/lib/<app>/revocations.db in a directory that "
                "user owns (chown it; not /tmp, where another user's file cannot be taken over).",
            )
        )
    if mount is not None and mount.fstype in NETWORK_FILESYSTEMS:
        findings.append(
            Finding(
                "sqlite-network-fs",
                Severity.PROBLEM,
                f"The SQLite file is on a {mount.fstype} network filesystem: WAL mode needs "
                "shared memory on a local filesystem, so workers can miss each other's "
                "revocations or fail to open the file.",
                "Put the file on a local disk, or use Redis (KC_SSO_STORE=redis://…) when the "
                "workers are on several hosts.",
            )
        )
    if mount is not None and mount.private_tmp:
        findings.append(
            Finding(
                "sqlite-private-tmp",
                Severity.WARN,
                f"{mount.mount_point} is a private directory of this service ({mount.root}, "
                "systemd PrivateTmp=yes): only processes of the same service see this file. "
                "A check or worker run outside the service sees another file.",
                "Run the check inside the service (the same unit), or set KC_SSO_STORE to a "
                "file outside /tmp, e.g. sqlite:////var/lib/<app>/revocations.db "
                "(StateDirectory=<app> in the unit).",
            )
        )
    if mount is not None and mount.fstype in ("tmpfs", "ramfs"):
        findings.append(
            Finding(
                "sqlite-on-tmpfs",
                Severity.WARN,
                f"The SQLite file is on {mount.fstype} ({mount.mount_point}): it is gone after "
                "a reboot, and sessions revoked before the reboot are accepted again until "
                "they reach KC_SSO_MAX_SESSION_LIFETIME.",
                "Set KC_SSO_STORE=sqlite:////var/lib/<app>/revocations.db on a disk that "
                "survives reboots.",
            )
        )
    return findings


def sqlite_path(url: str) -> str | None:
    """The file a ``sqlite:///…`` store URL names (None when the URL does not parse)."""
    try:
        parsed = parse_store_url(url)
    except ConfigurationError:
        return None
    path = unquote(parsed.parts.path[1:])
    return path or None
