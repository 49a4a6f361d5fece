"""The index from Keycloak sessions to Django sessions, for ending them eagerly.

A back-channel logout names a Keycloak session (``sid``), a user (``sub``) or a client;
Django's session store is keyed by random session keys.  :class:`SessionLink` joins the
two: one row per server-side Django session that holds a Keycloak login, written when the
login happens (``user_logged_in``) and dropped when the session ends.  Rows carry the same
subjects the revocation store's entries are matched by (digests scoped by issuer and
client, see :mod:`kc_sso_middleware.stores.model`), so a session is deleted exactly when
the request check would refuse it.  The plain ``sid`` and ``sub`` are there for people.

Sessions kept in signed cookies need no link: there is nothing server-side to delete.

A session deleted because its login was revoked leaves an :class:`EndedSession`, the link's
columns under the same key: the next request still carrying that key (the user's browser,
in another app of a single sign-out) is then refused with the reason, rather than passing
as a key Django does not know.
"""

from __future__ import annotations

from django.db import models


class SessionLink(models.Model):  # type: ignore[misc]  # django is untyped here
    """One Django session holding a Keycloak login."""

    session_key = models.CharField(max_length=255, primary_key=True)
    sid = models.CharField(max_length=255, null=True, blank=True)
    sub = models.CharField(max_length=255, null=True, blank=True)
    #: subjects of :class:`~kc_sso_middleware.stores.model.SessionKeys` (60-bit digests)
    session_subject = models.BigIntegerField(null=True, db_index=True)
    instance_subject = models.BigIntegerField(null=True, db_index=True)
    user_subject = models.BigIntegerField(null=True, db_index=True)
    client_subject = models.BigIntegerField()
    #: the ID token's ``iat``: user- and client-wide revocations compare it
    issued_at = models.FloatField(null=True)
    #: when the session outlives KC_SSO_MAX_SESSION_LIFETIME and the row can go
    expires_at = models.FloatField(db_index=True)

    class Meta:
        verbose_name = "Keycloak session link"

    def __str__(self) -> str:
        return f"Django session {self.session_key[:8]}… ↔ Keycloak session {self.sid}"


class EndedSession(models.Model):  # type: ignore[misc]  # django is untyped here
    """A Django session deleted for a revocation: the login it held (a tombstone).

    It vouches for nothing (it is no session): it only lets the request that still carries
    the key be told why it was signed out.  Rows go at ``expires_at``, as links do.
    """

    session_key = models.CharField(max_length=255, primary_key=True)
    sid = models.CharField(max_length=255, null=True, blank=True)
    sub = models.CharField(max_length=255, null=True, blank=True)
    session_subject = models.BigIntegerField(null=True)
    instance_subject = models.BigIntegerField(null=True)
    user_subject = models.BigIntegerField(null=True)
    client_subject = models.BigIntegerField()
    issued_at = models.FloatField(null=True)
    expires_at = models.FloatField(db_index=True)

    class Meta:
        verbose_name = "ended Keycloak session"

    def __str__(self) -> str:
        return f"ended Django session {self.session_key[:8]}… of Keycloak session {self.sid}"
