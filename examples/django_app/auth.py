"""The authentication backend: Django users from the ID token Keycloak signed.

mozilla-django-oidc's default backend matches users by e-mail from the userinfo
endpoint.  This one takes the verified ID token's claims (no extra request) and matches
users by ``sub``, Keycloak's stable user id, so a user without an e-mail can log in too.
It also keeps the refresh token in the session (mozilla-django-oidc stores only the
access and ID tokens), for the middleware's liveness check (``KC_SSO_LIVENESS_INTERVAL``)
and the API logout.
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from django.core.exceptions import PermissionDenied
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from kc_sso_middleware.django.integration import integration

log = logging.getLogger(__name__)


class KeycloakBackend(OIDCAuthenticationBackend):  # type: ignore[misc]
    def get_token(self, payload: dict[str, Any]) -> Any:
        try:
            token_info = super().get_token(payload)
        except requests.RequestException as exc:
            # Keycloak refused the code (used already, expired) or could not be reached:
            # a failed login (Django's authenticate() takes PermissionDenied so, and
            # mozilla-django-oidc sends the browser to LOGIN_REDIRECT_URL_FAILURE), not a 500.
            log.warning("login callback refused: the token request failed: %s", exc)
            raise PermissionDenied("the token request failed") from exc
        refresh_token = token_info.get("refresh_token")
        if refresh_token:
            # The one line at login: under KC_SSO_SESSION_REFRESH_TOKEN_KEY.
            self.request.session[integration().settings.session_refresh_token_key] = refresh_token
        return token_info

    def get_userinfo(self, access_token: str, id_token: str, payload: dict[str, Any]) -> Any:
        return payload  # the ID token's claims, verified by verify_token()

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        return bool(claims.get("sub"))

    def filter_users_by_claims(self, claims: dict[str, Any]) -> Any:
        return self.UserModel.objects.filter(username=claims["sub"])

    def create_user(self, claims: dict[str, Any]) -> Any:
        return self.UserModel.objects.create_user(
            claims["sub"],
            email=claims.get("email", ""),
            first_name=claims.get("given_name", "")[:150],
            last_name=claims.get("family_name", "")[:150],
        )
