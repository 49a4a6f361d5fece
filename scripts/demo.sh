#!/usr/bin/env bash
# The demo: Keycloak + Redis + the three example apps on 127.0.0.1, single sign-out across them.
# Installs what is missing first (see scripts/bootstrap.sh); Ctrl-C or SIGTERM stops everything.
# Options go to scripts/demo.py (--port-base N).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
