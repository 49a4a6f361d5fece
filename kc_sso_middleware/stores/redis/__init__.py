"""``redis://…``: revocations shared by every worker of every host, through Redis.

URLs: ``redis://[[user]:password@]host:port/db``, ``rediss://…`` (TLS), ``unix:///path.sock``
and ``redis+sentinel://[[user]:password@]host:port[,host:port…]/service_name[/db]`` (the
master is found through Sentinel, and failovers are followed).  Options: see
:mod:`kc_sso_middleware.stores.options`.  Needs Redis 6.2 or later (``ZADD GT``,
``ZRANGE … BYSCORE``) and the ``redis`` extra.

* :mod:`.connect`: URL to clients, Sentinel;
* :mod:`.scripts`: the keys and the Lua scripts;
* :mod:`.store`: :class:`RedisStore`, its writes and its lifecycle;
* :mod:`.follower`: keeping each process's replica current.
"""

from __future__ import annotations

from .connect import RedisConnector
from .store import RedisStore

__all__ = ["RedisConnector", "RedisStore"]
