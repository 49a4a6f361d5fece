"""Throwaway ``redis-server`` processes (Debian's binary) for tests, with failure controls.

``RedisServer`` runs one on a free 127.0.0.1 port with its own temp directory::

    with RedisServer() as server:
        store = RedisStore.from_url(server.url)
        server.kill()       # SIGKILL: connections drop, unsaved data is lost
        server.start()      # same port again
        server.restart()    # SHUTDOWN SAVE + start: data survives, connections drop

``RedisServer(durable=True)`` keeps an append-only file (``appendfsync always``), so a
SIGKILL loses nothing; by default a server has no persistence at all, like many managed and
default installations, and a kill empties it.

``RedisSentinel`` runs a Sentinel (``redis-server --sentinel``) monitoring one server.

``RedisCluster`` runs a Redis Cluster: three masters and three replicas (``redis-server
--cluster-enabled yes``, joined with ``redis-cli --cluster create … --cluster-replicas 1``),
without persistence; ``kill_master_of(key)`` SIGKILLs the master holding a key's slot and
waits until its replica has taken over::

    with RedisCluster() as cluster:
        url = f"{cluster.url}?prefix={{kcsso}}:"
        killed = cluster.kill_master_of("{kcsso}")   # its replica is master now
        killed.start()                                # rejoins, as a replica

Without the binary the test is skipped.  When ``CI`` or ``KC_SSO_REQUIRE_SERVICES=1`` is
set it fails instead, so a CI image missing the package cannot pass by skipping.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import pytest

__all__ = ["ClusterNode", "RedisCluster", "RedisSentinel", "RedisServer", "require_redis_server"]

_READY_TIMEOUT = 10.0


def require_redis_server() -> str:
    """The ``redis-server`` path; else skip the test, or fail it when services are required."""
    path = shutil.which("redis-server")
    if path is not None:
        return path
    reason = "redis-server is not installed (Debian: apt-get install redis-server)"
    if os.environ.get("CI") or os.environ.get("KC_SSO_REQUIRE_SERVICES") == "1":
        pytest.fail(
            f"{reason}; required because CI or KC_SSO_REQUIRE_SERVICES=1 is set", pytrace=False
        )
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _command(port: int, *commands: list[str], timeout: float = 1.0) -> bytes:
    """Send inline commands and return the raw reply bytes read first (no client library)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"".join(" ".join(words).encode() + b"\r\n" for words in commands))
        return sock.recv(4096)


class _RedisProcess(abc.ABC):
    """A redis-server process on a fixed port, restartable."""

    def __init__(self, kind: str, *, own_session: bool = False) -> None:
        """``own_session``: run in a session of its own, out of reach of the terminal's
        Ctrl-C and of a ``kill`` of the caller's process group (the owner stops it)."""
        self.own_session = own_session
        self.binary = require_redis_server()
        self.port = _free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix=f"kcsso-{kind}-")
        self.dir = Path(self._tmp.name)
        self.process: subprocess.Popen[bytes] | None = None

    @abc.abstractmethod
    def _argv(self) -> list[str]:
        """The command line (the port and directory stay the same across restarts)."""

    def _server_argv(self) -> list[str]:
        """A redis-server on loopback at this port, in this directory, without RDB snapshots."""
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.dir / "redis.log"),
            "--save",
            "",
        ]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start on the same port (and with the same data directory) as before."""
        if self.running:
            return
        log = self.dir / "redis.log"
        self.process = subprocess.Popen(
            self._argv(),
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=self.own_session,
        )
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with contextlib.suppress(OSError):
                # -NOAUTH: up, but password-protected; -LOADING would mean not yet.
                if _command(self.port, ["PING"]).startswith((b"+PONG", b"-NOAUTH")):
                    return
            time.sleep(0.02)
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        self.kill()
        raise RuntimeError(f"{self._argv()} did not become ready on port {self.port}:\n{tail}")

    def kill(self) -> None:
        """SIGKILL: every connection drops at once and unsaved data is lost."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def close(self) -> None:
        self.kill()
        self._tmp.cleanup()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RedisServer(_RedisProcess):
    """A standalone redis-server; no persistence unless :meth:`restart` saves on the way."""

    def __init__(
        self, *, password: str | None = None, durable: bool = False, own_session: bool = False
    ) -> None:
        super().__init__("redis", own_session=own_session)
        self.password = password
        self.durable = durable

    def _argv(self) -> list[str]:
        argv = [
            *self._server_argv(),
            *(
                ["--appendonly", "yes", "--appendfsync", "always"]
                if self.durable
                else ["--appendonly", "no"]
            ),
        ]
        if self.password is not None:
            argv += ["--requirepass", self.password]
        return argv

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def stop(self, *, save: bool = True) -> None:
        """Shut down cleanly, writing the dataset to disk first when ``save``."""
        if not self.running:
            return
        assert self.process is not None
        auth = [["AUTH", self.password]] if self.password is not None else []
        with contextlib.suppress(OSError):  # the server closes the connection on us
            _command(self.port, *auth, ["SHUTDOWN", "SAVE" if save else "NOSAVE"], timeout=10.0)
        try:
            self.process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def restart(self, *, keep_data: bool = True) -> None:
        """Stop and start again on the same port; every client connection drops."""
        self.stop(save=keep_data)
        if not keep_data:
            (self.dir / "dump.rdb").unlink(missing_ok=True)
        self.start()


class RedisSentinel(_RedisProcess):
    """One Sentinel monitoring ``server`` under ``service_name`` (quorum 1)."""

    def __init__(self, server: RedisServer, service_name: str = "kcsso") -> None:
        super().__init__("sentinel")
        self.server = server
        self.service_name = service_name

    def _argv(self) -> list[str]:
        # Sentinel rewrites its config file, so it lives in the writable temp dir.
        config = self.dir / "sentinel.conf"
        if not config.exists():
            config.write_text(
                f"port {self.port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.dir}\n"
                f"logfile {self.dir / 'redis.log'}\n"
                f"sentinel monitor {self.service_name} 127.0.0.1 {self.server.port} 1\n"
                f"sentinel down-after-milliseconds {self.service_name} 1000\n"
            )
        return [self.binary, str(config), "--sentinel"]

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service_name}"

    def __enter__(self) -> RedisSentinel:
        self.start()
        return self


def _redis_cli() -> str:
    path = shutil.which("redis-cli")
    if path is None:  # Debian ships it with redis-server (redis-tools)
        require_redis_server()
        pytest.skip("redis-cli is not installed (Debian: apt-get install redis-tools)")
    return path


class ClusterNode(_RedisProcess):
    """One node of a :class:`RedisCluster`; restarted, it rejoins with its ``nodes.conf``."""

    def __init__(self, node_timeout_ms: int) -> None:
        super().__init__("cluster-node")
        self.node_timeout_ms = node_timeout_ms
        self.bus_port = _free_port()  # not port + 10000, which may be taken or out of range

    def _argv(self) -> list[str]:
        return [
            *self._server_argv(),
            "--appendonly",
            "no",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            str(self.bus_port),
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            # A replica takes over however long it was cut off from its master.
            "--cluster-replica-validity-factor",
            "0",
            # Replicas sync at once (the default waits 5 s for more replicas to join).
            "--repl-diskless-sync-delay",
            "0",
        ]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class RedisCluster:
    """Three masters and three replicas on loopback, no persistence; torn down at exit.

    ``node_timeout_ms`` (``cluster-node-timeout``) is how long a master may be silent before
    its replica takes over: a failover takes about twice that.
    """

    def __init__(self, *, masters: int = 3, node_timeout_ms: int = 1000) -> None:
        self.cli = _redis_cli()
        self.nodes = [ClusterNode(node_timeout_ms) for _ in range(masters * 2)]
        self.masters = masters

    @property
    def url(self) -> str:
        """``redis+cluster://`` naming the first three nodes (any of them finds the rest)."""
        return "redis+cluster://" + ",".join(n.address for n in self.nodes[: self.masters])

    def cli_call(self, node: ClusterNode, *words: str, timeout: float = 10.0) -> str:
        done = subprocess.run(
            [self.cli, "-h", "127.0.0.1", "-p", str(node.port), *words],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
        return done.stdout

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(n.address for n in self.nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        self.wait_until_ok()

    def _info(self, node: ClusterNode) -> dict[str, str]:
        text = self.cli_call(node, "CLUSTER", "INFO", timeout=2.0)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def _replicating(self, node: ClusterNode) -> bool:
        """A master, or a replica whose link to its master is up (it has the data)."""
        text = self.cli_call(node, "INFO", "replication", timeout=2.0)
        return "role:master" in text or "master_link_status:up" in text

    def wait_until_ok(self, timeout: float = 30.0) -> None:
        """Until every running node says ``cluster_state:ok`` with every slot served, and
        every running replica is in sync with its master."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                running = [n for n in self.nodes if n.running]
                infos = [self._info(n) for n in running]
                if all(
                    i.get("cluster_state") == "ok" and i.get("cluster_slots_ok") == "16384"
                    for i in infos
                ) and all(self._replicating(n) for n in running):
                    return
            except (subprocess.SubprocessError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster is not ok after {timeout} s")
            time.sleep(0.1)

    def master_of(self, key: str) -> ClusterNode:
        """The node serving ``key``'s slot, as a running node sees it."""
        asker = next(n for n in self.nodes if n.running)
        slot = int(self.cli_call(asker, "CLUSTER", "KEYSLOT", key).strip())
        for line in self.cli_call(asker, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            # <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <state> <slots…>
            flags = fields[2].split(",")
            if "master" not in flags or "fail" in flags or fields[7] != "connected":
                continue
            for served in fields[8:]:
                first, _, last = served.partition("-")
                if first.isdigit() and int(first) <= slot <= int(last or first):
                    port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                    return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no master serves slot {slot}")

    def kill_master_of(self, key: str, timeout: float = 30.0) -> ClusterNode:
        """SIGKILL the master of ``key``'s slot; return once a replica has taken over."""
        victim = self.master_of(key)
        victim.kill()
        self.wait_for_failover(key, victim, timeout)
        return victim

    def wait_for_failover(self, key: str, victim: ClusterNode, timeout: float = 30.0) -> None:
        """Until another node than ``victim`` serves ``key``'s slot and the cluster is ok."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.master_of(key) is not victim:
                    break
            except (RuntimeError, subprocess.SubprocessError, StopIteration):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica took over from {victim.address}")
            time.sleep(0.05)
        self.wait_until_ok(timeout)

    def rejoin(self, node: ClusterNode, timeout: float = 30.0) -> None:
        """Restart a killed node and wait until it replicates its new master again."""
        node.start()
        deadline = time.monotonic() + timeout
        while "master_link_status:up" not in self.cli_call(node, "INFO", "replication"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.address} did not rejoin as a replica")
            time.sleep(0.1)
        self.wait_until_ok(timeout)

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
