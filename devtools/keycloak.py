"""Run a real Keycloak server from the Maven Central distribution, without containers.

Used by the integration tests, CI and the demo. The distribution is fetched once with
Maven, unpacked once into a cache and *prepared* once: a throw-away ``start-dev`` run
performs Quarkus' re-augmentation for the dev profile (about 15 s) and leaves an H2
database holding only the master realm and the bootstrap admin (schema creation and
master-realm set-up, about 7 s more). Every server then starts from a fresh copy of that
prepared tree, so each run gets a pristine database and imports its realm on start-up,
and only pays for booting the JVM and the import: 13-15 s instead of 36 s on 2 idle cores.
Measurements are in KEYCLOAK_FINDINGS.md beside this file.

Run ``python -m devtools.keycloak --help`` to serve the demo realm by hand.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

KEYCLOAK_VERSION = "26.5.6"
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin"
LOOPBACK = "127.0.0.1"

_ARTIFACT = f"org.keycloak:keycloak-quarkus-dist:{KEYCLOAK_VERSION}:tar.gz"
_ARCHIVE_NAME = f"keycloak-quarkus-dist-{KEYCLOAK_VERSION}.tar.gz"
_PREPARED_STAMP = ".kc-sso-prepared"
# Upper-case names only: Keycloak's own "${role_...}" message keys must pass through.
_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
_JAVA_OPTS_APPEND = " ".join(
    (
        # C1 only: start-up on 2 cores needs about half the CPU (28 s -> 15 s) without C2,
        # and a test server never runs long enough to profit from C2's code.
        "-XX:TieredStopAtLevel=1",
        # Java 24+ prints an IllegalAccessError from jboss-threads at shutdown without this.
        "--add-opens=java.base/java.lang=ALL-UNNAMED",
    )
)


def cache_dir() -> Path:
    """Return the download/unpack cache, shared by every run on the machine."""
    configured = os.environ.get("KC_SSO_CACHE_DIR")
    path = Path(configured) if configured else Path.home() / ".cache" / "kc-sso"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def _cache_lock() -> Iterator[None]:
    """Serialise cache set-up so parallel test workers don't unpack or prepare twice."""
    with (cache_dir() / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_distribution() -> Path:
    """Return the home of the pristine unpacked distribution, fetching it if needed.

    The archive comes from Maven Central through ``mvn`` because that registry is the
    one source reachable from every machine of the project (developers' and CI's).
    """
    cache = cache_dir()
    home = cache / f"keycloak-{KEYCLOAK_VERSION}"
    with _cache_lock():
        if (home / "bin" / "kc.sh").is_file():
            return home
        archive = cache / _ARCHIVE_NAME
        if not archive.is_file():
            if shutil.which("mvn") is None:
                raise RuntimeError(f"{archive} is missing and mvn is not installed to fetch it")
            subprocess.run(
                [
                    "mvn",
                    "-q",
                    "dependency:copy",
                    f"-Dartifact={_ARTIFACT}",
                    f"-DoutputDirectory={cache}",
                ],
                check=True,
            )
        # Unpack beside the target and rename, so an interrupted unpack leaves no half tree.
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(staging, filter="data")
            shutil.rmtree(home, ignore_errors=True)
            (staging / home.name).rename(home)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return home


def _java_major(java_home: Path) -> int | None:
    """Read the major version from a JDK's ``release`` file (no JVM start needed)."""
    try:
        text = (java_home / "release").read_text()
    except OSError:
        return None
    # Java 8 and older say "1.x" and so read as major 1: too old either way.
    match = re.search(r'^JAVA_VERSION="(\d+)', text, re.MULTILINE)
    if match is None or not (java_home / "bin" / "java").is_file():
        return None
    return int(match.group(1))


def find_java() -> Path | None:
    """Return the home of the Java to run Keycloak with, or None if there is none.

    Keycloak 26 supports Java 21 and 25; 17 still works but is deprecated, so it is
    only the fallback. ``$JAVA_HOME`` wins among equally acceptable JDKs.
    """
    java_home = os.environ.get("JAVA_HOME")
    preferred = Path(java_home).resolve() if java_home else None
    candidates = [preferred] if preferred else []
    jvm_root = Path("/usr/lib/jvm")
    if jvm_root.is_dir():
        candidates.extend(sorted(jvm_root.iterdir()))
    if java_on_path := shutil.which("java"):
        candidates.append(Path(java_on_path).resolve().parent.parent)

    found: dict[Path, int] = {}
    for candidate in candidates:
        home = candidate.resolve()
        major = _java_major(home)
        if home not in found and major is not None and major >= 17:
            found[home] = major
    if not found:
        return None
    return max(found, key=lambda home: (found[home] >= 21, home == preferred, found[home]))


def free_port() -> int:
    """Ask the kernel for a currently unused loopback TCP port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def render_realm(realm_file: Path, substitutions: Mapping[str, str]) -> str:
    """Return the realm JSON with ``${NAME}`` placeholders replaced.

    App URLs are only known at run time (free ports), hence the placeholders. Values are
    JSON-escaped. A placeholder without a value is an error here rather than left to
    Keycloak, whose import would silently try to resolve it from its own environment.
    """
    missing: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in substitutions:
            missing.add(name)
            return match.group(0)
        return json.dumps(substitutions[name])[1:-1]

    rendered = _PLACEHOLDER.sub(replace, realm_file.read_text())
    if missing:
        raise ValueError(f"{realm_file}: no value for placeholder(s) {sorted(missing)}")
    return rendered


def _launch(
    home: Path, java_home: Path, port: int, log_path: Path, extra_args: list[str]
) -> subprocess.Popen[bytes]:
    """Start ``kc.sh start-dev`` in its own process group, bound to loopback only."""
    env = {
        name: value
        for name, value in os.environ.items()
        # A developer's own Keycloak/Quarkus settings must not leak into the test server.
        if not name.startswith(("KC_", "QUARKUS_"))
    }
    env.update(
        JAVA_HOME=str(java_home),
        JAVA_OPTS_APPEND=_JAVA_OPTS_APPEND,
        KC_BOOTSTRAP_ADMIN_USERNAME=ADMIN_USERNAME,
        KC_BOOTSTRAP_ADMIN_PASSWORD=ADMIN_PASSWORD,
    )
    base_url = f"http://{LOOPBACK}:{port}"
    args = [
        str(home / "bin" / "kc.sh"),
        "start-dev",
        f"--http-host={LOOPBACK}",
        f"--http-port={port}",
        # Only opened if health/metrics get enabled; it then inherits the loopback host,
        # and a free port keeps it off the shared default 9000.
        f"--http-management-port={free_port()}",
        # A fixed issuer, whichever loopback name a client happens to use.
        f"--hostname={base_url}",
        *extra_args,
    ]
    with log_path.open("ab") as log:
        return subprocess.Popen(
            args,
            cwd=home,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _log_tail(log_path: Path, lines: int = 40) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _wait_ready(process: subprocess.Popen[bytes], url: str, timeout: float, log_path: Path) -> None:
    """Poll ``url`` until it answers 200; fail early if Keycloak exits."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"Keycloak exited with status {process.returncode} before it was ready; "
                    f"log {log_path}:\n{_log_tail(log_path)}"
                )
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
    raise TimeoutError(
        f"{url} not ready after {timeout:.0f} s; log {log_path}:\n{_log_tail(log_path)}"
    )


def _terminate(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the whole process group (kc.sh and its JVM), SIGKILL after ``grace``."""
    if process.poll() is None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    process.wait()


def _prepared_distribution(java_home: Path, timeout: float) -> Path:
    """Return a dist that is already augmented for dev mode and has a master-realm DB.

    ``kc.sh build`` refuses the dev profile, so the only way to persist dev-mode
    augmentation is one real ``start-dev`` run; the database it leaves behind (schema +
    master realm + bootstrap admin, nothing else) becomes the template for every run.
    """
    source = ensure_distribution()
    target = cache_dir() / f"keycloak-{KEYCLOAK_VERSION}-dev"
    with _cache_lock():
        if (target / _PREPARED_STAMP).is_file():
            return target
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, symlinks=True)
        log_path = cache_dir() / f"prepare-{KEYCLOAK_VERSION}.log"
        log_path.unlink(missing_ok=True)
        port = free_port()
        process = _launch(target, java_home, port, log_path, [])
        try:
            _wait_ready(
                process,
                f"http://{LOOPBACK}:{port}/realms/master/.well-known/openid-configuration",
                timeout,
                log_path,
            )
        finally:
            _terminate(process, grace=30.0)
        data = target / "data"
        shutil.rmtree(data / "transaction-logs", ignore_errors=True)
        for leftover in (data / "h2").glob("*.trace.db"):
            leftover.unlink()
        (target / _PREPARED_STAMP).write_text(f"{java_home}\n")
    return target


class KeycloakServer:
    """One Keycloak process on a free loopback port with a fresh database.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. The log survives
    :meth:`stop` so a failing test can still show it; only the copied server tree is
    removed.
    """

    def __init__(
        self,
        realm_file: Path | None = None,
        substitutions: Mapping[str, str] | None = None,
        *,
        port: int | None = None,
        startup_timeout: float = 240.0,
        stop_grace: float = 15.0,
        java_home: Path | None = None,
        work_dir: Path | None = None,
    ) -> None:
        """Configure, but don't start, a server.

        ``realm_file`` is imported at start-up after :func:`render_realm` with
        ``substitutions``; its realm is the one readiness waits for and :meth:`issuer`
        defaults to. ``work_dir`` (created if missing) receives the server copy and the
        log; by default a new temporary directory is used.
        """
        self._realm_json = (
            render_realm(realm_file, substitutions or {}) if realm_file is not None else None
        )
        self.realm: str = (
            json.loads(self._realm_json)["realm"] if self._realm_json is not None else "master"
        )
        self.port = port if port is not None else free_port()
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self._java_home = java_home
        self._work_dir = work_dir
        self._log_path: Path | None = None
        self._home: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None
        self.startup_seconds: float | None = None
        """Seconds from launching ``kc.sh`` to the realm's discovery answering 200."""

    @property
    def base_url(self) -> str:
        """Root URL of the server, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{LOOPBACK}:{self.port}"

    def issuer(self, realm: str | None = None) -> str:
        """Issuer URL of ``realm`` (default: the imported realm)."""
        return f"{self.base_url}/realms/{realm or self.realm}"

    @property
    def log_path(self) -> Path:
        """File receiving Keycloak's stdout and stderr."""
        if self._log_path is None:
            raise RuntimeError("the server has not been started")
        return self._log_path

    def log_text(self) -> str:
        """Whole log so far, e.g. to assert on ``KC-SERVICES0057``."""
        return self.log_path.read_text(errors="replace")

    def start(self) -> KeycloakServer:
        """Launch Keycloak and block until the realm is served."""
        if self._process is not None:
            raise RuntimeError("the server is already running")
        java_home = self._java_home or find_java()
        if java_home is None:
            raise RuntimeError("no Java 17+ found (JAVA_HOME, /usr/lib/jvm, PATH)")
        template = _prepared_distribution(java_home, self.startup_timeout)

        run_dir = self._work_dir or Path(tempfile.mkdtemp(prefix="kc-sso-run-"))
        run_dir.mkdir(parents=True, exist_ok=True)
        self._home = run_dir / "keycloak"
        shutil.rmtree(self._home, ignore_errors=True)
        shutil.copytree(template, self._home, symlinks=True)
        self._log_path = run_dir / "keycloak.log"
        self._log_path.unlink(missing_ok=True)

        extra_args = []
        if self._realm_json is not None:
            import_dir = self._home / "data" / "import"
            import_dir.mkdir(parents=True, exist_ok=True)
            (import_dir / f"{self.realm}.json").write_text(self._realm_json)
            extra_args.append("--import-realm")

        started = time.monotonic()
        self._process = _launch(self._home, java_home, self.port, self._log_path, extra_args)
        try:
            _wait_ready(
                self._process,
                f"{self.issuer()}/.well-known/openid-configuration",
                self.startup_timeout,
                self._log_path,
            )
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        self._client = httpx.Client(base_url=self.base_url, timeout=30.0)
        return self

    def stop(self) -> None:
        """Terminate the process group and delete the server copy; safe to call twice."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._process is not None:
            _terminate(self._process, self.stop_grace)
            self._process = None
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None

    def __enter__(self) -> KeycloakServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def http(self) -> httpx.Client:
        """Client with ``base_url`` set to the server, for protocol requests in tests."""
        if self._client is None:
            raise RuntimeError("the server is not running")
        return self._client

    def token(self, client_id: str, client_secret: str | None, **form: str) -> dict[str, Any]:
        """POST to the realm's token endpoint and return the JSON body (raises on error)."""
        data = {"client_id": client_id, **form}
        if client_secret is not None:
            data["client_secret"] = client_secret
        response = self.http.post(f"{self.issuer()}/protocol/openid-connect/token", data=data)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def password_grant(
        self, client_id: str, client_secret: str | None, username: str, password: str
    ) -> dict[str, Any]:
        """Direct-access grant with ``scope=openid``, so the response has an ID token."""
        return self.token(
            client_id,
            client_secret,
            grant_type="password",
            username=username,
            password=password,
            scope="openid",
        )

    def admin_token(self) -> str:
        """Fresh master-realm admin access token (they live only 60 s, so none is cached)."""
        response = self.http.post(
            f"{self.issuer('master')}/protocol/openid-connect/token",
            data={
                "grant_type": "password",
                "client_id": "admin-cli",
                "username": ADMIN_USERNAME,
                "password": ADMIN_PASSWORD,
            },
        )
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token

    def admin_request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Admin REST call; ``path`` is relative to ``/admin/realms/``. Does not raise."""
        headers = {"Authorization": f"Bearer {self.admin_token()}", **kwargs.pop("headers", {})}
        return self.http.request(
            method, f"/admin/realms/{path.lstrip('/')}", headers=headers, **kwargs
        )

    def admin_get(self, path: str, **params: str) -> Any:
        """GET an admin resource and return its JSON (raises on error)."""
        response = self.admin_request("GET", path, params=params)
        response.raise_for_status()
        return response.json()

    def admin_post(self, path: str, payload: Any = None) -> httpx.Response:
        """POST ``payload`` as JSON, e.g. to ``demo/users/{id}/logout`` (raises on error)."""
        return self.admin_request("POST", path, json=payload).raise_for_status()

    def admin_delete(self, path: str) -> httpx.Response:
        """DELETE an admin resource, e.g. ``demo/sessions/{sid}`` (raises on error)."""
        return self.admin_request("DELETE", path).raise_for_status()

    def user_id(self, username: str, realm: str | None = None) -> str:
        """Id of the user called exactly ``username``."""
        users = self.admin_get(f"{realm or self.realm}/users", username=username, exact="true")
        if len(users) != 1:
            raise LookupError(f"{len(users)} users named {username!r}")
        user_id: str = users[0]["id"]
        return user_id


def prepare(timeout: float = 600.0) -> Path:
    """Fetch, unpack and prepare the distribution now (bootstrap does this once, up front)."""
    java_home = find_java()
    if java_home is None:
        raise RuntimeError("no Java 17+ found (JAVA_HOME, /usr/lib/jvm, PATH)")
    return _prepared_distribution(java_home, timeout)


def main() -> None:
    """Serve a realm until interrupted, e.g. for the demo apps; or only prepare the cache."""
    parser = argparse.ArgumentParser(prog="python -m devtools.keycloak")
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="fetch and prepare the cached distribution, then exit",
    )
    parser.add_argument("--realm", type=Path, help="realm JSON to import")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "substitutions", nargs="*", metavar="NAME=VALUE", help="realm placeholder values"
    )
    options = parser.parse_args()
    if options.prepare_only:
        started = time.monotonic()
        home = prepare()
        print(f"Keycloak {KEYCLOAK_VERSION} ready in {home} ({time.monotonic() - started:.0f} s)")
        return
    substitutions = dict(item.split("=", 1) for item in options.substitutions)
    with KeycloakServer(options.realm, substitutions, port=options.port) as server:
        print(f"Keycloak {KEYCLOAK_VERSION} ready in {server.startup_seconds:.1f} s")
        print(
            f"issuer {server.issuer()}; admin console {server.base_url}/admin/ "
            f"({ADMIN_USERNAME}/{ADMIN_PASSWORD}); log {server.log_path}"
        )
        # Keycloak runs in its own session, so Ctrl-C or SIGTERM reach only us: stop it.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
