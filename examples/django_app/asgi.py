"""ASGI entry point: ``uvicorn --workers 3 examples.django_app.asgi:application``."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")

application = get_asgi_application()

from examples.django_app.startup import migrate  # noqa: E402 - needs Django set up

migrate()
