#!/usr/bin/env bash
# The demo: Keycloak + Redis + both example apps on 127.0.0.1, single sign-out across them.
# Installs what is missing first (see scripts/bootstrap.sh); Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py
