"""``--probe-app``: does the app's back-channel URL reach the middleware?

An empty back-channel request (a form with a blank ``logout_token``) is answered by the
middleware with 400 ``invalid_request`` and ``missing_logout_token`` and changes nothing, so
it tells the middleware's path from a 404, another app or a proxy (the app logs it as one
warning, "back-channel logout rejected: missing_logout_token").  It is sent from this
host with this host's trust, which may differ from Keycloak's: a success here does not
prove that Keycloak can connect.
"""

from __future__ import annotations

import httpx

from .fetch import Failure, Fetched, post_form
from .report import Finding, Severity

__all__ = ["probe_backchannel", "probe_findings"]


def probe_backchannel(http: httpx.Client, url: str) -> Fetched:
    return post_form(http, url, {"logout_token": ""})


def probe_findings(fetched: Fetched) -> list[Finding]:
    url = fetched.url
    if fetched.failure is Failure.TLS:
        return [
            Finding(
                "app-tls-untrusted",
                Severity.WARN,
                f"The app's back-channel URL {url} failed TLS from here ({fetched.error}).  "
                "Keycloak's Java runtime will likely refuse it too.",
                "Serve the app with a certificate Keycloak trusts (complete chain), or give "
                "Keycloak the CA: conf/truststores or --truststore-paths=/path/to/ca.pem.",
            )
        ]
    if not fetched.answered:
        return [
            Finding(
                "app-unreachable",
                Severity.UNCHECKED,
                f"The app's back-channel URL {url} could not be reached from here: "
                f"{fetched.error}.",
                "Start the app, or check --app-url; Keycloak must reach this URL from its own "
                "host.",
            )
        ]
    body = fetched.json_object() or {}
    description = str(body.get("error_description", ""))
    if fetched.status == 400 and description.startswith("missing_logout_token"):
        return [
            Finding(
                "backchannel-probe-ok",
                Severity.OK,
                f"The app's back-channel URL {url} is answered by the middleware (an empty "
                "request was refused as it should be).",
            )
        ]
    if fetched.status == 503 and "error" in body:
        return [
            Finding(
                "backchannel-not-served",
                Severity.PROBLEM,
                f"The app's back-channel URL {url} answered 503 ({description or body['error']}): "
                "the middleware is there but cannot store revocations or fetch Keycloak's "
                "keys, so logouts are refused and lost.",
                "Look at the app's log; check the store and the app's access to Keycloak.",
                {"status": fetched.status},
            )
        ]
    return [
        Finding(
            "backchannel-not-served",
            Severity.PROBLEM,
            f"The app's back-channel URL {url} answered HTTP {fetched.status}, not the "
            "middleware's 400 missing_logout_token: Keycloak's logout requests there are lost "
            "(Keycloak ignores the answer).",
            "Wrap the app with the middleware (outermost), serve KC_SSO_BACKCHANNEL_PATH "
            "through it, and include any mount prefix in --app-url; a proxy in front must "
            "pass POST requests to that path through.",
            {"status": fetched.status},
        )
    ]
