"""Where the SQLite store lives by default, and what start-up says about where it lives."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from kc_sso_middleware._variables import default_store_url
from kc_sso_middleware.stores import _mounts
from kc_sso_middleware.stores._mounts import location_warnings
from kc_sso_middleware.stores.sqlite import SQLiteStore


def _path(url: str) -> str:
    assert url.startswith("sqlite:///")
    return url[len("sqlite:///") :]


def test_default_is_the_service_state_directory_when_systemd_gives_one(tmp_path: Path) -> None:
    """StateDirectory= (systemd sets $STATE_DIRECTORY) wins; the first of several."""
    env = {"STATE_DIRECTORY": f"{tmp_path}/app:{tmp_path}/other", "HOME": str(tmp_path)}
    assert _path(default_store_url(env)) == f"{tmp_path}/app/kc-sso-revocations.db"


def test_default_is_the_users_state_directory(tmp_path: Path) -> None:
    """$XDG_STATE_HOME, else ~/.local/state: persistent, one per user, so every worker of
    a deployment (one user) shares it."""
    assert _path(default_store_url({"XDG_STATE_HOME": str(tmp_path / "state")})) == str(
        tmp_path / "state" / "kc-sso" / "revocations.db"
    )
    assert _path(default_store_url({"HOME": str(tmp_path)})) == str(
        tmp_path / ".local" / "state" / "kc-sso" / "revocations.db"
    )
    assert default_store_url({"HOME": str(tmp_path)}) == default_store_url({"HOME": str(tmp_path)})


@pytest.mark.parametrize(
    "home",
    [
        pytest.param("/nonexistent", id="no home"),
        pytest.param("/", id="root directory"),
        pytest.param("relative", id="relative"),
    ],
)
def test_default_without_a_usable_home_is_the_temp_directory(home: str) -> None:
    """A system account without a home falls back to the temp directory (warned about)."""
    assert _path(default_store_url({"HOME": home})) == os.path.join(
        tempfile.gettempdir(), "kc-sso-revocations.db"
    )


def test_relative_xdg_state_home_is_ignored(tmp_path: Path) -> None:
    """The XDG spec says a relative $XDG_STATE_HOME is invalid."""
    url = default_store_url({"XDG_STATE_HOME": "state", "HOME": str(tmp_path)})
    assert _path(url).startswith(str(tmp_path / ".local"))


_MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:26 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
31 22 0:27 / /mnt/nfs rw shared:6 - nfs4 server:/export rw
40 22 8:1 /tmp/systemd-private-abc-app.service-xyz/tmp /tmp rw shared:1 - ext4 /dev/sda1 rw
"""


@pytest.mark.parametrize(
    ("path", "words"),
    [
        pytest.param("/var/lib/app/revocations.db", [], id="persistent disk"),
        pytest.param("/run/app/revocations.db", ["tmpfs", "reboot"], id="tmpfs"),
        pytest.param(
            "/tmp/kc-sso-revocations.db",  # noqa: S108 - a path in a sample mountinfo
            ["PrivateTmp", "stops"],
            id="private tmp",
        ),
        pytest.param("/mnt/nfs/revocations.db", ["nfs4", "network"], id="network"),
    ],
)
def test_location_warnings_name_what_would_lose_the_file(path: str, words: list[str]) -> None:
    """A tmpfs, a private temp directory and a network filesystem are each named."""
    found = " ".join(location_warnings(path, _MOUNTINFO))
    for word in words:
        assert word in found
    if not words:
        assert found == ""


def test_start_logs_where_the_file_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start-up says which file holds the revocations (INFO), loudly if it could be lost."""
    monkeypatch.setattr(_mounts.tempfile, "gettempdir", lambda: "/elsewhere")
    path = tmp_path / "kept" / "revocations.db"
    with caplog.at_level(logging.INFO, logger="kc_sso_middleware"):
        store = SQLiteStore(path)
        store.start()
        store.close()
    said = [r for r in caplog.records if str(path) in r.getMessage()]
    assert said
    assert said[0].levelno == logging.INFO
    assert "revocations are kept in" in said[0].getMessage()


SHM = "/dev/shm"  # noqa: S108 - the tmpfs Linux mounts there


@pytest.mark.skipif(
    not os.path.isdir(SHM) or "tmpfs" not in " ".join(location_warnings(f"{SHM}/x")),
    reason="no tmpfs at /dev/shm",
)
def test_start_warns_loudly_about_a_tmpfs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file on a tmpfs is forgotten at reboot: a WARNING naming the tmpfs."""
    directory = Path(tempfile.mkdtemp(dir=SHM, prefix="kc-sso-test-"))
    try:
        with caplog.at_level(logging.WARNING, logger="kc_sso_middleware"):
            store = SQLiteStore(directory / "revocations.db")
            store.start()
            store.close()
        loud = [r for r in caplog.records if "MAY BE LOST" in r.getMessage()]
        assert len(loud) == 1
        assert loud[0].levelno == logging.WARNING
        assert "tmpfs" in loud[0].getMessage()
    finally:
        shutil.rmtree(directory)
