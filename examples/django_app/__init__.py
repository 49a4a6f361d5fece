"""Django example: Keycloak login with mozilla-django-oidc, single sign-out with kc_sso_middleware.

Run with ``gunicorn -w 3 examples.django_app.wsgi:application`` or
``uvicorn --workers 3 examples.django_app.asgi:application`` from the repository root;
configured only by ``KC_SSO_*`` variables (see :mod:`.settings`).
"""
