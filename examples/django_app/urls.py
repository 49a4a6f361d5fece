"""Routes: ``/``, ``/login``, mozilla-django-oidc's ``/oidc/callback/``, ``/me``, ``/api/me``.

The logout path (``/logout``) and the back-channel path (``/backchannel-logout``) need no
route: the middleware serves them before URL resolution.  Of mozilla-django-oidc's URLs
only the authentication request and the callback are used: its logout view would end the
Django session without ending the Keycloak session.
"""

from __future__ import annotations

from django.urls import path
from mozilla_django_oidc.urls import OIDCAuthenticateClass, OIDCCallbackClass

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("login", OIDCAuthenticateClass.as_view(), name="login"),
    path("oidc/authenticate/", OIDCAuthenticateClass.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", OIDCCallbackClass.as_view(), name="oidc_authentication_callback"),
    path("me", views.me, name="me"),
    path("api/me", views.api_me, name="api_me"),
]
