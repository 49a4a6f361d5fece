"""The framework-free core: it decides, the adapters translate.

* :mod:`.facade` — :class:`SSOCore`: routes a path to its responder, checks other requests;
* :mod:`.check` — the revocation check of ordinary requests (memory only);
* :mod:`.logout`, :mod:`.backchannel`, :mod:`.frontchannel`, :mod:`.admin` — one responder
  per protocol;
* :mod:`.answers` — errors become responses there, and only there;
* :mod:`.context`, :mod:`.redirects` — what the responders share.
"""

from __future__ import annotations

from .facade import Responder, SSOCore

__all__ = ["Responder", "SSOCore"]
