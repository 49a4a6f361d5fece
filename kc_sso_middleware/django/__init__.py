"""Single sign-out for Django: an installable app and a middleware.

.. code-block:: python

   INSTALLED_APPS += ["kc_sso_middleware.django"]
   MIDDLEWARE = [
       ...,
       "django.contrib.sessions.middleware.SessionMiddleware",
       ...,
       "django.contrib.auth.middleware.AuthenticationMiddleware",
       "kc_sso_middleware.django.middleware.SSOMiddleware",
       ...,
   ]

* :mod:`.middleware` — ``SSOMiddleware``: the middleware's own paths, and the check of
  every other request (sync under WSGI, async under ASGI);
* :mod:`.source` — ``DjangoSessionSource``: the Keycloak login in ``request.session``;
* :mod:`.models` — ``SessionLink``: Keycloak sessions → Django sessions, for purging;
  ``EndedSession``: what a purged session held, so its next request is told why;
* :mod:`.integration` — settings, store and core, built once per process;
* :mod:`.checks` — system checks (middleware order, ``OIDC_STORE_ID_TOKEN``).

Nothing is imported here, so that Django can import the app before its models are ready.
"""
