"""``kc-sso-check`` against a real Keycloak: a correct client, then one mistake at a time.

One Keycloak for the module (realm ``examples/keycloak/realm.json``).  Each case changes
the ``flask-app`` client through the admin REST API (``PUT /admin/realms/demo/clients/{id}``),
runs ``python -m kc_sso_middleware check --json`` as a subprocess with the app's
environment, checks its exit status and the code of the problem, and puts the client back.
No app runs: the check compares configuration, and ``--app-url`` names where the app would be.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.apps import REPO
from devtools.keycloak import ADMIN_PASSWORD, ADMIN_USERNAME, KeycloakServer, find_java
from tests.conftest import services_required

pytestmark = [pytest.mark.keycloak]

REALM_FILE = REPO / "examples" / "keycloak" / "realm.json"
CLIENT_ID, CLIENT_SECRET = "flask-app", "flask-secret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


APP_URL = f"http://127.0.0.1:{_free_port()}"


def _require(condition: bool, reason: str) -> None:
    if condition:
        return
    if services_required():
        pytest.fail(f"{reason}; required in CI (KC_SSO_REQUIRE_SERVICES)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def keycloak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeycloakServer]:
    from devtools.keycloak import cache_dir

    _require(find_java() is not None, "no Java 17+ runtime (apt-get install openjdk-17-jre)")
    cached = any(cache_dir().glob("keycloak-quarkus-dist-*"))
    _require(shutil.which("mvn") is not None or cached, "no Maven to fetch Keycloak")
    server = KeycloakServer(
        REALM_FILE,
        {
            "FLASK_APP_URL": APP_URL,
            "FASTAPI_APP_URL": "http://127.0.0.1:9",
            "DJANGO_APP_URL": "http://127.0.0.1:9",
        },
        work_dir=tmp_path_factory.mktemp("doctor-keycloak"),
    )
    with server:
        print(f"Keycloak started in {server.startup_seconds:.1f} s")
        yield server


@dataclass
class Checked:
    status: int
    report: dict[str, Any]

    def codes(self, severity: str | None = None) -> list[str]:
        return [
            f["code"]
            for f in self.report["findings"]
            if severity is None or f["severity"] == severity
        ]

    def finding(self, code: str) -> dict[str, Any]:
        found = [f for f in self.report["findings"] if f["code"] == code]
        assert len(found) == 1, f"{code} not reported once: {self.codes()}"
        return found[0]


def check(
    keycloak: KeycloakServer, *args: str, admin: bool = True, tmp: Path, **env: str
) -> Checked:
    """Run the check as a subprocess with the app's environment (plus ``env``)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KC_SSO_")}
    environ.update(
        KC_SSO_ISSUER=keycloak.issuer(),
        KC_SSO_CLIENT_ID=CLIENT_ID,
        KC_SSO_CLIENT_SECRET=CLIENT_SECRET,
        KC_SSO_SESSION_SECRET="doctor-e2e-session-secret",
        KC_SSO_STORE=f"sqlite:///{tmp / 'revocations.db'}",
        PYTHONPATH=str(REPO),
    )
    if admin:
        environ.update(
            KC_SSO_CHECK_ADMIN_USER=ADMIN_USERNAME, KC_SSO_CHECK_ADMIN_PASSWORD=ADMIN_PASSWORD
        )
    environ.update(env)
    done = subprocess.run(
        [sys.executable, "-m", "kc_sso_middleware", "check", "--app-url", APP_URL, "--json", *args],
        env=environ,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.stdout, f"no report; stderr:\n{done.stderr}"
    report = json.loads(done.stdout)
    assert report["exit_code"] == done.returncode
    assert CLIENT_SECRET not in done.stdout  # no secret is ever printed
    return Checked(done.returncode, report)


def _client(keycloak: KeycloakServer, client_id: str = CLIENT_ID) -> dict[str, Any]:
    found = keycloak.admin_get("demo/clients", clientId=client_id)
    assert len(found) == 1
    rep: dict[str, Any] = found[0]
    return rep


def _put(keycloak: KeycloakServer, rep: dict[str, Any]) -> None:
    keycloak.admin_request("PUT", f"demo/clients/{rep['id']}", json=rep).raise_for_status()


@contextmanager
def misconfigured(
    keycloak: KeycloakServer, change: Callable[[dict[str, Any]], None]
) -> Iterator[dict[str, Any]]:
    """The client changed by ``change`` for the block's duration, then restored."""
    original = _client(keycloak)
    changed = copy.deepcopy(original)
    change(changed)
    _put(keycloak, changed)
    try:
        yield _client(keycloak)
    finally:
        # Keycloak merges the attributes of a PUT into the stored ones; an attribute the
        # change added is removed only by sending it empty.
        added = set(changed["attributes"]) - set(original["attributes"])
        _put(
            keycloak,
            {**original, "attributes": {**original["attributes"], **dict.fromkeys(added, "")}},
        )
    restored = _client(keycloak)
    assert restored["attributes"] == original["attributes"]
    assert restored["frontchannelLogout"] == original["frontchannelLogout"]
    assert restored["adminUrl"] == original["adminUrl"]


def _attribute(name: str, value: str) -> Callable[[dict[str, Any]], None]:
    def change(rep: dict[str, Any]) -> None:
        rep["attributes"][name] = value

    return change


def _field(name: str, value: object) -> Callable[[dict[str, Any]], None]:
    def change(rep: dict[str, Any]) -> None:
        rep[name] = value

    return change


def test_correct_client_exits_0(keycloak: KeycloakServer, tmp_path: Path) -> None:
    """The realm file's client is what the middleware needs: nothing to fix."""
    checked = check(keycloak, tmp=tmp_path)
    assert checked.status == 0, checked.report
    assert checked.codes("problem") == []
    assert checked.codes("unchecked") == []
    for code in (
        "discovery-ok",
        "logout-support-ok",
        "jwks-ok",
        "backchannel-url-ok",
        "session-required-ok",
        "post-logout-uri-ok",
        "admin-url-ok",
        "client-secret-ok",
    ):
        assert code in checked.codes("ok"), code
    assert checked.report["context"]["keycloak_version"].startswith("26.")
    urls = checked.report["context"]["urls"]
    assert urls["backchannel_logout_url"] == f"{APP_URL}/backchannel-logout"


MISTAKES = [
    pytest.param(
        _attribute("backchannel.logout.session.required", "false"),
        "session-required-off",
        "Backchannel logout session required",
        id="session required off",
    ),
    pytest.param(
        _field("frontchannelLogout", True),
        "frontchannel-on",
        "Front channel logout",
        id="front-channel on",
    ),
    pytest.param(
        _attribute("backchannel.logout.url", f"{APP_URL}/wrong-path"),
        "backchannel-url-wrong",
        f"{APP_URL}/backchannel-logout",
        id="wrong back-channel path",
    ),
    pytest.param(
        _attribute("backchannel.logout.url", "http://127.0.0.1:9/backchannel-logout"),
        "backchannel-url-wrong",
        f"{APP_URL}/backchannel-logout",
        id="back-channel URL of another port",
    ),
    pytest.param(
        _attribute("backchannel.logout.url", ""),
        "backchannel-url-missing",
        f"{APP_URL}/backchannel-logout",
        id="no back-channel URL",
    ),
    pytest.param(
        _attribute("post.logout.redirect.uris", "https://elsewhere.example/*"),
        "post-logout-uri-missing",
        f"{APP_URL}/*",
        id="missing post-logout URI",
    ),
    pytest.param(
        _field("publicClient", True),
        "client-public",
        "Client authentication",
        id="client authentication off",
    ),
    pytest.param(
        _field("secret", "not-the-app-secret"),
        "client-secret-wrong",
        "KC_SSO_CLIENT_SECRET",
        id="wrong client secret",
    ),
]


@pytest.mark.parametrize(("change", "code", "fix_words"), MISTAKES)
def test_each_mistake_exits_1_naming_it(
    keycloak: KeycloakServer,
    tmp_path: Path,
    change: Callable[[dict[str, Any]], None],
    code: str,
    fix_words: str,
) -> None:
    """One deliberate misconfiguration: exit 1, that problem's code, and its fix."""
    with misconfigured(keycloak, change):
        checked = check(keycloak, tmp=tmp_path)
    assert checked.status == 1, checked.report
    assert code in checked.codes("problem"), checked.codes()
    assert fix_words in checked.finding(code)["fix"]
    others = [c for c in checked.codes("problem") if c != code]
    assert others == [], f"other problems reported too: {others}"


def _frontchannel_mode(session_required: str) -> Callable[[dict[str, Any]], None]:
    def change(rep: dict[str, Any]) -> None:
        rep["frontchannelLogout"] = True
        rep["attributes"]["frontchannel.logout.url"] = f"{APP_URL}/frontchannel-logout"
        rep["attributes"]["frontchannel.logout.session.required"] = session_required

    return change


@pytest.mark.parametrize("session_required", ["true", "false"])
def test_frontchannel_frames_without_iss_and_sid_are_a_problem(
    keycloak: KeycloakServer, tmp_path: Path, session_required: str
) -> None:
    """In front-channel mode, 'Front channel logout session required' off makes Keycloak
    frame the app without iss and sid, which KC_SSO_FRONTCHANNEL_SESSION_REQUIRED refuses:
    exit 1 naming it.  On, only the front-channel warning remains."""
    with misconfigured(keycloak, _frontchannel_mode(session_required)) as rep:
        assert rep["attributes"]["frontchannel.logout.session.required"] == session_required
        checked = check(keycloak, tmp=tmp_path, KC_SSO_FRONTCHANNEL_PATH="/frontchannel-logout")
    assert "frontchannel-replaces-backchannel" in checked.codes("warn")
    if session_required == "false":
        assert checked.status == 1, checked.report
        assert checked.codes("problem") == ["frontchannel-session-required-off"]
        fix = checked.finding("frontchannel-session-required-off")["fix"]
        assert "frontchannel.logout.session.required" in fix
    else:
        assert checked.status == 0, checked.report
        assert checked.codes("problem") == []


def test_missing_admin_url_is_a_warning(keycloak: KeycloakServer, tmp_path: Path) -> None:
    """No Admin URL: 'Sign out all' cannot reach the app, but single sign-out works: exit 0."""
    with misconfigured(keycloak, _field("adminUrl", "")):
        checked = check(keycloak, tmp=tmp_path)
    assert checked.status == 0, checked.report
    assert "admin-url-missing" in checked.codes("warn")
    assert APP_URL in checked.finding("admin-url-missing")["fix"]


def test_service_account_with_view_clients(keycloak: KeycloakServer, tmp_path: Path) -> None:
    """A service account with view-clients reads the client; without the role: exit 2."""
    _service_account(keycloak, "doctor-sa", "doctor-sa-secret", roles=["view-clients"])
    _service_account(keycloak, "doctor-norole", "doctor-norole-secret", roles=[])
    allowed = check(
        keycloak,
        "--admin-client-id",
        "doctor-sa",
        admin=False,
        tmp=tmp_path,
        KC_SSO_CHECK_ADMIN_CLIENT_SECRET="doctor-sa-secret",
    )
    assert allowed.status == 0, allowed.report
    assert "session-required-ok" in allowed.codes("ok")
    assert "realm-not-read" in allowed.codes("info")  # no view-realm
    refused = check(
        keycloak,
        "--admin-client-id",
        "doctor-norole",
        admin=False,
        tmp=tmp_path,
        KC_SSO_CHECK_ADMIN_CLIENT_SECRET="doctor-norole-secret",
    )
    assert refused.status == 2, refused.report
    assert refused.codes("unchecked") == ["admin-forbidden"]


def test_wrong_admin_password_exits_2(keycloak: KeycloakServer, tmp_path: Path) -> None:
    checked = check(keycloak, tmp=tmp_path, KC_SSO_CHECK_ADMIN_PASSWORD="wrong")
    assert checked.status == 2
    assert checked.codes("unchecked") == ["admin-login-failed"]


def test_unreachable_issuer_exits_2(keycloak: KeycloakServer, tmp_path: Path) -> None:
    checked = check(
        keycloak, tmp=tmp_path, KC_SSO_ISSUER=f"http://127.0.0.1:{_free_port()}/realms/demo"
    )
    assert checked.status == 2, checked.report
    assert "issuer-unreachable" in checked.codes("unchecked")
    assert checked.codes("problem") == []


def test_wrong_realm_exits_1(keycloak: KeycloakServer, tmp_path: Path) -> None:
    checked = check(keycloak, tmp=tmp_path, KC_SSO_ISSUER=keycloak.issuer("Demo"), admin=False)
    assert checked.status == 1
    assert checked.codes("problem") == ["discovery-not-found"]


def _service_account(
    keycloak: KeycloakServer, client_id: str, secret: str, roles: list[str]
) -> None:
    """A confidential client whose service account has these realm-management roles."""
    keycloak.admin_request(
        "POST",
        "demo/clients",
        json={
            "clientId": client_id,
            "protocol": "openid-connect",
            "publicClient": False,
            "secret": secret,
            "serviceAccountsEnabled": True,
            "standardFlowEnabled": False,
        },
    ).raise_for_status()
    if not roles:
        return
    created = _client(keycloak, client_id)
    user = keycloak.admin_get(f"demo/clients/{created['id']}/service-account-user")
    management = _client(keycloak, "realm-management")
    granted = [
        keycloak.admin_get(f"demo/clients/{management['id']}/roles/{role}") for role in roles
    ]
    keycloak.admin_request(
        "POST", f"demo/users/{user['id']}/role-mappings/clients/{management['id']}", json=granted
    ).raise_for_status()
