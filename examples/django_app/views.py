"""The example's pages: ``/``, ``/me`` and ``/api/me`` (login and callback: mozilla's views)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from examples._bearer import BearerValidator
from examples._page import index_page
from kc_sso_middleware.sources.bearer import unverified_claims

_bearer = BearerValidator(
    settings.SSO.issuer,
    jwks_uri=settings.OIDC_OP_JWKS_ENDPOINT,
    algorithms=settings.SSO.algorithms,
    timeout=settings.SSO.http_timeout,
    verify=settings.SSO_TLS,
)


def _claims(request: HttpRequest) -> dict[str, Any] | None:
    """The ID token's claims of the logged-in user (mozilla-django-oidc verified it)."""
    if not request.user.is_authenticated:
        return None
    token = request.session.get("oidc_id_token")
    return unverified_claims(token) if isinstance(token, str) else None


def index(request: HttpRequest) -> HttpResponse:
    # The middleware's marker says why, on the request right after a single sign-out.
    marker = getattr(request, "kc_sso_signed_out", None)
    return HttpResponse(index_page("Django app", _claims(request), marker))


def me(request: HttpRequest) -> JsonResponse:
    claims = _claims(request)
    if claims is None:
        return JsonResponse({"error": "not_logged_in"}, status=401)
    return JsonResponse(claims)


def api_me(request: HttpRequest) -> JsonResponse:
    """The bearer token's claims, validated here (the middleware only refuses revoked ones)."""
    answer = _bearer.answer(request.headers.get("Authorization"))
    response = JsonResponse(dict(answer.body), status=answer.status)
    for name, value in answer.headers:
        response[name] = value
    response["Cache-Control"] = "no-store"
    return response
