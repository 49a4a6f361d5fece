"""First start: create the SQLite database and its tables, once however many workers start.

Every worker runs ``migrate`` under an exclusive lock on a file beside the database: the
first creates the tables, the others find nothing left to do.  uvicorn imports the app
inside its event loop, where Django refuses database work, so there it runs in a thread.
"""

from __future__ import annotations

import asyncio
import fcntl
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.core.management import call_command


def _migrate() -> None:
    database = settings.DATABASES["default"]["NAME"]
    with open(f"{database}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            call_command("migrate", interactive=False, verbosity=0)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def migrate() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        _migrate()
        return
    with ThreadPoolExecutor(1) as thread:
        thread.submit(_migrate).result()
