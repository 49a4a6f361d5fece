"""The OP's discovery document and JWKS: cached, refetched when a new ``kid`` shows up.

Decisions only; the HTTP happens through :class:`~._effects.HttpCall` effects.  An unknown
``kid`` triggers one refetch, throttled by ``KC_SSO_JWKS_MIN_REFRESH_INTERVAL`` so a flood of
forged tokens cannot turn into a flood of requests to Keycloak, while a real key rotation is
picked up without a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ._effects import Flow, HttpCall
from .errors import DiscoveryError
from .settings import Settings

__all__ = ["Provider", "ProviderMetadata"]

logger = logging.getLogger("kc_sso_middleware")


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    """The few discovery fields the middleware uses."""

    issuer: str
    jwks_uri: str
    end_session_endpoint: str


class Provider:
    """Cached discovery and keys of one issuer."""

    def __init__(self, settings: Settings, clock: Callable[[], float]) -> None:
        self._issuer = settings.issuer
        self._ttl = settings.jwks_cache_ttl
        self._min_refresh = settings.jwks_min_refresh_interval
        self._clock = clock
        self.discovery_url = f"{settings.issuer}/.well-known/openid-configuration"
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None
        self._keys_at = -float("inf")

    def metadata(self) -> Flow[ProviderMetadata]:
        """Discovery, cached for the JWKS cache TTL; the issuer must match exactly."""
        now = self._clock()
        if self._metadata is not None and now - self._metadata_at < self._ttl:
            return self._metadata
        result = yield HttpCall("GET", self.discovery_url)
        try:
            if result.status != 200:
                raise ValueError(f"status {result.status}")
            doc = result.json()
            issuer, jwks_uri = doc["issuer"], doc["jwks_uri"]
            # Keycloak always publishes it; the fallback is its well-known path.
            end_session = doc.get("end_session_endpoint") or (
                f"{self._issuer}/protocol/openid-connect/logout"
            )
        except (ValueError, KeyError, TypeError) as exc:
            if self._metadata is not None:
                logger.warning("discovery refresh failed (%s); keeping the cached document", exc)
                return self._metadata
            raise DiscoveryError(f"bad discovery document at {self.discovery_url}: {exc}") from None
        if issuer != self._issuer:
            # OIDC Discovery §4.3: the issuer in the document must be the one we asked.
            raise DiscoveryError(
                f"discovery says issuer {issuer!r}, but KC_SSO_ISSUER is {self._issuer!r}"
            )
        self._metadata = ProviderMetadata(issuer, jwks_uri, end_session)
        self._metadata_at = now
        return self._metadata

    def keys(self, *, unknown_kid: bool = False) -> Flow[KeySet | None]:
        """The OP's signing keys; ``unknown_kid`` asks for a (throttled) refetch."""
        now = self._clock()
        age = now - self._keys_at
        fresh = self._keys is not None and age < self._ttl
        if fresh and not (unknown_kid and age >= self._min_refresh):
            return self._keys
        if self._keys is not None and unknown_kid and age < self._min_refresh:
            return self._keys
        metadata = yield from self.metadata()
        result = yield HttpCall("GET", metadata.jwks_uri)
        try:
            if result.status != 200:
                raise ValueError(f"status {result.status}")
            keys = KeySet.import_key_set(result.json())
        except (ValueError, KeyError, TypeError, JoseError) as exc:
            if self._keys is None:
                raise DiscoveryError(f"bad JWKS at {metadata.jwks_uri}: {exc}") from None
            logger.warning("JWKS refresh failed (%s); keeping the cached keys", exc)
            return self._keys
        self._keys, self._keys_at = keys, now
        return keys
