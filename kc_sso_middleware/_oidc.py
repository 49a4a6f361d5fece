"""The OP's discovery document and JWKS: cached, refetched when an unknown ``kid`` shows up.

Decisions only; the HTTP happens through :class:`~._effects.HttpCall` effects, and the
runners coalesce concurrent identical fetches into one (single flight).

Key rotation and the throttle
-----------------------------
A token naming a ``kid`` the cached key set lacks (or naming none, when no cached key
verifies it) triggers a refetch, whatever the age of the cached set: a key the OP published
since the last fetch must be accepted whenever the first token signed with it arrives,
because Keycloak sends each logout once and never retries.  What is throttled is the
refetches unknown ``kid`` values cause: at most one per
``KC_SSO_JWKS_MIN_REFRESH_INTERVAL``, counting failed fetches too, so a flood of forged
tokens (or an OP answering 500) cannot become a flood of requests to Keycloak.  Tokens that
arrive while a refetch is running wait for it; one that arrives while the throttle holds
is answered 503 with ``Retry-After`` (:class:`~kc_sso_middleware.errors.KeysThrottledError`),
a failure visible as the server's, never as a bad token.  A failed refetch is a 503 too.

A failed fetch of any kind (the first load, the refresh of a set past its TTL, a refetch)
holds the OP off for the same interval: meanwhile a stale set keeps serving, and without
one a token is answered 503 ``Retry-After`` at once, so an OP that is down is not asked
again for every token that arrives.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, Key, KeySet

from . import events as ev
from ._effects import HttpCall
from ._flows import Flow
from ._logs import untrusted
from .errors import DiscoveryError, KeysThrottledError
from .events import Events
from .settings import Settings

__all__ = ["Provider", "ProviderMetadata"]

logger = logging.getLogger("kc_sso_middleware")

#: RFC 7518 §3.3: RS* and PS* keys "of size 2048 bits or larger MUST be used"
MIN_RSA_BITS = 2048


def _usable_keys(document: object) -> KeySet:
    """The keys of a JWK Set that can be used, each judged on its own (RFC 7517 §5: a key
    of an unknown type, missing a member or out of range is ignored, not the whole set);
    RSA keys shorter than :data:`MIN_RSA_BITS` are left out too.  A set whose every key
    is left out is an error: the cached keys then keep serving."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set: no 'keys' list")
    usable: list[Key] = []
    for entry in document["keys"]:
        kid = entry.get("kid") if isinstance(entry, dict) else None
        kty = entry.get("kty") if isinstance(entry, dict) else None
        if kty == "oct":
            continue  # a symmetric key never verifies a token here (RFC 8725 §3.1)
        bits = _modulus_bits(entry) if kty == "RSA" else None
        # Judged before the import, which would only warn about it.
        if bits is not None and bits < MIN_RSA_BITS:
            logger.warning(
                "JWKS key %s left out: RSA key of %d bits (at least %d)",
                untrusted(kid),
                bits,
                MIN_RSA_BITS,
            )
            continue
        try:
            usable.append(JWKRegistry.import_key(entry))
        except (JoseError, ValueError, TypeError, KeyError, AttributeError) as exc:
            logger.warning("JWKS key %s left out: %s", untrusted(kid), untrusted(str(exc)))
    if document["keys"] and not usable:
        raise ValueError("no usable key in the JWK Set")
    return KeySet(usable)


def _modulus_bits(entry: dict[str, Any]) -> int | None:
    """The size of an RSA JWK's modulus ``n`` (``None``: not readable; the import says why)."""
    n = entry.get("n")
    if not isinstance(n, str):
        return None
    try:
        modulus = base64.urlsafe_b64decode(n + "=" * (-len(n) % 4))
    except ValueError:
        return None
    return int.from_bytes(modulus, "big").bit_length()


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    """The few discovery fields the middleware uses."""

    issuer: str
    jwks_uri: str
    end_session_endpoint: str
    introspection_endpoint: str | None = None


class Provider:
    """Cached discovery and keys of one issuer."""

    def __init__(
        self, settings: Settings, clock: Callable[[], float], events: Events | None = None
    ) -> None:
        self._events = events if events is not None else Events(settings.client_id)
        self._issuer = settings.issuer
        self._ttl = settings.jwks_cache_ttl
        self._min_refresh = settings.jwks_min_refresh_interval
        self._http_timeout = settings.http_timeout
        self._clock = clock
        self.discovery_url = f"{settings.issuer}/.well-known/openid-configuration"
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None
        self._keys_at = -float("inf")
        #: when the last refetch for an unknown kid began (successful or not)
        self._refetched_at = -float("inf")
        #: a refetch for an unknown kid is running until about then (others join it)
        self._refetch_until = -float("inf")
        #: when a fetch of the keys last failed, whatever asked for it
        self._failed_at = -float("inf")
        #: when the OP last answered a fetch successfully (for health and the doctor)
        self.last_contact: float | None = None

    def metadata(self) -> Flow[ProviderMetadata]:
        """Discovery, cached for the JWKS cache TTL; the issuer must match exactly."""
        now = self._clock()
        if self._metadata is not None and now - self._metadata_at < self._ttl:
            return self._metadata
        result = yield from HttpCall("GET", self.discovery_url)
        try:
            if result.status != 200:
                raise ValueError(f"status {result.status}")
            doc = result.json()
            issuer, jwks_uri = doc["issuer"], doc["jwks_uri"]
            if not isinstance(jwks_uri, str):
                raise TypeError("jwks_uri is not a string")
            # Keycloak always publishes it; the fallback is its well-known path.
            end_session = doc.get("end_session_endpoint") or (
                f"{self._issuer}/protocol/openid-connect/logout"
            )
            introspection = doc.get("introspection_endpoint")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            if self._metadata is not None:
                logger.warning("discovery refresh failed (%s); keeping the cached document", exc)
                return self._metadata
            raise DiscoveryError(f"bad discovery document at {self.discovery_url}: {exc}") from None
        if issuer != self._issuer:
            # OIDC Discovery §4.3: the issuer in the document must be the one we asked.
            raise DiscoveryError(
                f"discovery says issuer {issuer!r}, but KC_SSO_ISSUER is {self._issuer!r}"
            )
        self._metadata = ProviderMetadata(
            issuer,
            jwks_uri,
            str(end_session),
            introspection if isinstance(introspection, str) else None,
        )
        self._metadata_at = now
        self.last_contact = now
        return self._metadata

    def keys(self) -> Flow[KeySet]:
        """The OP's signing keys, cached for ``KC_SSO_JWKS_CACHE_TTL``."""
        now = self._clock()
        if self._keys is not None and now - self._keys_at < self._ttl:
            return self._keys
        wait = self._failed_at + self._min_refresh - now
        if wait > 0:  # the OP failed a moment ago: do not ask it again for every token
            if self._keys is not None:
                return self._keys
            raise KeysThrottledError(
                f"the OP's keys could not be fetched {now - self._failed_at:.1f} s ago; "
                "retry later",
                retry_after=wait,
            )
        try:
            return (yield from self._fetch_keys(now, "load" if self._keys is None else "refresh"))
        except DiscoveryError:
            if self._keys is None:
                raise
            logger.warning("JWKS refresh failed; keeping the cached keys")
            return self._keys

    def keys_for_unknown_kid(self, kid: str | None) -> Flow[KeySet]:
        """Refetch the keys because a token names ``kid`` (``None``: a token without one
        that no cached key verifies); throttled, never by age."""
        now = self._clock()
        joining = now < self._refetch_until
        if not joining:
            last = max(self._refetched_at, self._failed_at)
            wait = last + self._min_refresh - now
            if wait > 0:
                which = "has no kid" if kid is None else f"names the unknown kid {kid!r}"
                raise KeysThrottledError(
                    f"a token {which} and the OP's keys were "
                    f"last fetched {now - last:.1f} s ago; retry later",
                    retry_after=wait,
                )
            self._refetched_at = now
            self._refetch_until = now + self._http_timeout
        try:
            return (yield from self._fetch_keys(now, "unknown_kid"))
        finally:
            self._refetch_until = -float("inf")

    def _fetch_keys(self, now: float, reason: str) -> Flow[KeySet]:
        try:
            metadata = yield from self.metadata()
            result = yield from HttpCall("GET", metadata.jwks_uri)
            try:
                if result.status != 200:
                    raise ValueError(f"status {result.status}")
                keys = _usable_keys(result.json())
            except (ValueError, KeyError, TypeError, AttributeError, JoseError) as exc:
                raise DiscoveryError(f"bad JWKS at {metadata.jwks_uri}: {exc}") from None
        except DiscoveryError as exc:
            self._failed_at = now
            self._events.emit(
                ev.JWKS_FAILED,
                "the OP's keys could not be fetched",
                level=30,
                reason=reason,
                detail=untrusted(str(exc)),
            )
            raise
        self._keys, self._keys_at = keys, now
        self.last_contact = now
        self._events.emit(ev.JWKS_FETCHED, "the OP's keys were fetched", reason=reason)
        return keys
