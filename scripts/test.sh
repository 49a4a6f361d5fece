#!/usr/bin/env bash
# Run every check: ruff (lint and format), mypy --strict, and the whole test suite (unit, real servers,
# real Redis, real Keycloak in a real browser).  Installs what it needs first.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k backchannel`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# In CI a missing Keycloak, Redis or browser is a failure, never a skip.
if [ -n "${CI:-}" ]; then export KC_SSO_REQUIRE_SERVICES=1; fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
