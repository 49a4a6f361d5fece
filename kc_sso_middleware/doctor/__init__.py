"""``kc-sso-check``: is this deployment set up for single sign-out?

``python -m kc_sso_middleware check`` (or the console script ``kc-sso-check``) reads the
app's ``KC_SSO_*`` environment and checks, reporting each problem in plain words with its
fix and a stable code:

* Keycloak's discovery document and JWKS (:mod:`.provider`);
* the revocation store (:mod:`.store`; a SQLite file's location and sharing,
  :mod:`.sqlite_file`);
* the URLs Keycloak's client must name for this app (:mod:`.urls`), optionally probing the
  app's back-channel URL (:mod:`.probe`);
* with admin credentials, the client's actual settings, the realm's and the server
  version (:mod:`.admin`, :mod:`.client`, :mod:`.client_access`, :mod:`.realm`);
* with ``--explain``, the known failure texts of Keycloak's log (:mod:`.explain`).

Each area decides over plain values (:mod:`.fetch` turns HTTP into them); :mod:`.checks`
runs the areas, :mod:`.report` holds the findings and the exit code (0 right, 1 a problem,
2 something could not be checked), :mod:`.codes` lists every code.
"""

from __future__ import annotations

from .checks import Options, run
from .cli import main
from .codes import CODES
from .report import Finding, Report, Severity

__all__ = ["CODES", "Finding", "Options", "Report", "Severity", "main", "run"]
