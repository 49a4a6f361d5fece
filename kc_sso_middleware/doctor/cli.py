"""``kc-sso-check`` / ``python -m kc_sso_middleware check``: argument parsing and output.

Reads the same ``KC_SSO_*`` environment as the app.  Secrets are best given through the
environment (``KC_SSO_CHECK_ADMIN_PASSWORD``, ``KC_SSO_CHECK_ADMIN_CLIENT_SECRET``), since
command-line arguments are visible to other users in the process list; none is ever printed.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import traceback
from collections.abc import Mapping, Sequence

from ..errors import ConfigurationError
from ..settings import Settings
from .admin import AdminCredentials
from .checks import Options, config_report, run
from .explain import explain
from .report import EXIT_UNCHECKED, Report
from .urls import normalize_base

__all__ = ["CHECK_VARIABLES", "build_parser", "main"]

#: the check's own environment variables (the app's are in ``settings.VARIABLES``)
CHECK_VARIABLES = (
    "KC_SSO_CHECK_APP_URL",
    "KC_SSO_CHECK_APP_URL_FOR_KEYCLOAK",
    "KC_SSO_CHECK_ADMIN_USER",
    "KC_SSO_CHECK_ADMIN_PASSWORD",
    "KC_SSO_CHECK_ADMIN_CLIENT_ID",
    "KC_SSO_CHECK_ADMIN_CLIENT_SECRET",
    "KC_SSO_CHECK_ADMIN_REALM",
    "KC_SSO_CHECK_ADMIN_URL",
)

_DESCRIPTION = """\
Check a kc_sso_middleware deployment: Keycloak's discovery document and keys, the
revocation store, the URLs Keycloak's client needs and (with admin credentials) the
client's actual settings.  Reads the app's KC_SSO_* environment.  Exit status: 0 when
everything needed is right, 1 when there is a problem, 2 when something could not be
checked.
"""

_EPILOG = """\
environment: KC_SSO_CHECK_APP_URL, KC_SSO_CHECK_APP_URL_FOR_KEYCLOAK, KC_SSO_CHECK_ADMIN_USER,
KC_SSO_CHECK_ADMIN_PASSWORD, KC_SSO_CHECK_ADMIN_CLIENT_ID, KC_SSO_CHECK_ADMIN_CLIENT_SECRET,
KC_SSO_CHECK_ADMIN_REALM and KC_SSO_CHECK_ADMIN_URL stand in for the options of the same
names.  Example:
  KC_SSO_CHECK_ADMIN_PASSWORD=... kc-sso-check --app-url https://app.example --admin-user admin
"""


def build_parser(prog: str = "kc-sso-check") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    urls = parser.add_argument_group("the app")
    urls.add_argument(
        "--app-url",
        metavar="URL",
        help="the app's public URL, with any mount prefix (default: the origin of "
        "KC_SSO_POST_LOGOUT_REDIRECT_URI)",
    )
    urls.add_argument(
        "--app-url-for-keycloak",
        metavar="URL",
        help="the app's URL as Keycloak reaches it (back-channel and Admin URL), when not "
        "--app-url",
    )
    urls.add_argument(
        "--probe-app",
        action="store_true",
        help="send an empty back-channel request to the app to see that the middleware answers it",
    )
    admin = parser.add_argument_group(
        "Keycloak's admin API (optional: compares the client's actual settings)"
    )
    admin.add_argument("--admin-user", metavar="USER", help="an admin user (admin-cli login)")
    admin.add_argument(
        "--admin-password",
        metavar="PASSWORD",
        help="its password (better: KC_SSO_CHECK_ADMIN_PASSWORD; asked for on a terminal)",
    )
    admin.add_argument(
        "--admin-client-id",
        metavar="ID",
        help="or a service account's client, with the realm-management role view-clients",
    )
    admin.add_argument(
        "--admin-client-secret",
        metavar="SECRET",
        help="its secret (better: KC_SSO_CHECK_ADMIN_CLIENT_SECRET)",
    )
    admin.add_argument(
        "--admin-realm",
        metavar="REALM",
        help="the realm to log in to (default: master for a user, the app's realm for a "
        "service account)",
    )
    admin.add_argument(
        "--admin-url",
        metavar="URL",
        help="Keycloak's URL for the admin API, when not the issuer's server",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print the report as JSON")
    output.add_argument("--no-store", action="store_true", help="do not open the revocation store")
    output.add_argument(
        "--explain",
        metavar="TEXT",
        help="explain the known failure texts in TEXT (- reads standard input, e.g. "
        "Keycloak's log) instead of checking",
    )
    return parser


def _value(given: str | None, env: Mapping[str, str], name: str) -> str | None:
    if given:
        return given
    value = env.get(name, "").strip()
    return value or None


def _options(
    ns: argparse.Namespace, env: Mapping[str, str], parser: argparse.ArgumentParser
) -> Options:
    user = _value(ns.admin_user, env, "KC_SSO_CHECK_ADMIN_USER")
    client_id = _value(ns.admin_client_id, env, "KC_SSO_CHECK_ADMIN_CLIENT_ID")
    if user and client_id:
        parser.error("give either an admin user or an admin client, not both")
    password = _value(ns.admin_password, env, "KC_SSO_CHECK_ADMIN_PASSWORD")
    if user and password is None:
        if not sys.stdin.isatty():
            parser.error("--admin-user needs --admin-password or KC_SSO_CHECK_ADMIN_PASSWORD")
        password = getpass.getpass(f"Keycloak password of {user}: ")
    secret = _value(ns.admin_client_secret, env, "KC_SSO_CHECK_ADMIN_CLIENT_SECRET")
    if client_id and secret is None:
        parser.error(
            "--admin-client-id needs --admin-client-secret or KC_SSO_CHECK_ADMIN_CLIENT_SECRET"
        )
    app_url = _value(ns.app_url, env, "KC_SSO_CHECK_APP_URL")
    for_keycloak = _value(ns.app_url_for_keycloak, env, "KC_SSO_CHECK_APP_URL_FOR_KEYCLOAK")
    for name, url in (("--app-url", app_url), ("--app-url-for-keycloak", for_keycloak)):
        if url is not None:
            try:
                normalize_base(url)
            except ValueError as exc:
                parser.error(f"{name}: {exc}")
    return Options(
        app_url=app_url,
        app_url_for_keycloak=for_keycloak,
        admin=AdminCredentials(
            user=user,
            password=password,
            client_id=client_id,
            client_secret=secret,
            realm=_value(ns.admin_realm, env, "KC_SSO_CHECK_ADMIN_REALM"),
            base_url=_value(ns.admin_url, env, "KC_SSO_CHECK_ADMIN_URL"),
        ),
        check_store=not ns.no_store,
        probe_app=ns.probe_app,
    )


def _report(
    ns: argparse.Namespace, env: Mapping[str, str], parser: argparse.ArgumentParser
) -> Report:
    if ns.explain is not None:
        return Report.of(explain(sys.stdin.read() if ns.explain == "-" else ns.explain))
    options = _options(ns, env, parser)
    try:
        settings = Settings.from_env(env)
    except ConfigurationError as exc:
        return config_report(exc)
    return run(settings, options)


def main(argv: Sequence[str] | None = None, prog: str = "kc-sso-check") -> int:
    """Run the check; print the report; return the exit status."""
    parser = build_parser(prog)
    ns = parser.parse_args(argv)
    try:
        report = _report(ns, os.environ, parser)
    except Exception:  # a bug here must not read as "a problem was found" (exit 1)
        traceback.print_exc()
        print(f"{prog}: internal error, nothing was concluded", file=sys.stderr)
        return EXIT_UNCHECKED
    sys.stdout.write(report.to_json() + "\n" if ns.json else report.to_text())
    return report.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
