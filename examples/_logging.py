"""The middleware's events as one JSON line each, for the demo (``EXAMPLE_EVENT_LOG=1``).

The middleware logs every outcome through the logger ``kc_sso_middleware.events`` with its
fields on the record (``record.event``, ``record.kc_sso``).  With ``EXAMPLE_EVENT_LOG=1``
the examples write those records at INFO to stderr, one line each::

    kc-sso-event {"at": 1767225600.12, "app": "Flask app", "pid": 4242,
                  "event": "backchannel.accepted", "fields": {"sid_tag": "…", …}}

(on one line), which ``scripts/demo.py`` reads from the servers' logs.  Unset, nothing
changes: the events stay with the logging set-up of the server or the framework.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

__all__ = ["EVENT_LOGGER", "LINE_PREFIX", "EventFormatter", "log_events", "wanted"]

EVENT_LOGGER = "kc_sso_middleware.events"
#: what starts every event line (the servers' own lines share the log)
LINE_PREFIX = "kc-sso-event "


def wanted() -> bool:
    """Whether ``EXAMPLE_EVENT_LOG=1`` asks for event lines."""
    return os.environ.get("EXAMPLE_EVENT_LOG") == "1"


class EventFormatter(logging.Formatter):
    """One event record as ``kc-sso-event {json}``: when, which app and process, what."""

    def __init__(self, app: str) -> None:
        super().__init__()
        self.app = app

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = dict(getattr(record, "kc_sso", None) or {})
        fields.pop("app", None)  # the client id; the line names the app
        line = {
            "at": round(record.created, 3),
            "app": self.app,
            "pid": record.process,
            "event": getattr(record, "event", None),
            "fields": fields,
            "message": record.getMessage(),
        }
        return LINE_PREFIX + json.dumps(line, default=str, separators=(",", ":"))


def log_events(app: str) -> None:
    """With ``EXAMPLE_EVENT_LOG=1``: the middleware's events at INFO to stderr, one JSON line
    each (see the module docstring); otherwise nothing."""
    if not wanted():
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EventFormatter(app))
    logger = logging.getLogger(EVENT_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # once, in this form only
