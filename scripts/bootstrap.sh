#!/usr/bin/env bash
# Install everything the tests and the demo need, on a fresh Debian machine; idempotent.
#   Debian packages: redis-server, chromium, a Java runtime (if none >= 17), maven, python3-venv
#   Python: .venv with this package and its [tests] extra (examples, Playwright, mypy, ruff)
#   Keycloak: the server distribution from Maven Central, cached in ~/.cache/kc-sso
set -euo pipefail
cd "$(dirname "$0")/.."

have_java() {
  local candidate
  for candidate in "${JAVA_HOME:-}/bin/java" /usr/lib/jvm/*/bin/java "$(command -v java || true)"; do
    [ -x "$candidate" ] || continue
    local major
    major=$("$candidate" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
    [ "${major:-0}" -ge 17 ] && return 0
  done
  return 1
}

packages=()
command -v redis-server >/dev/null || packages+=(redis-server)
command -v chromium >/dev/null || packages+=(chromium)
command -v mvn >/dev/null || packages+=(maven)
have_java || packages+=(openjdk-17-jre-headless)
python3 -m venv --help >/dev/null 2>&1 || packages+=(python3-venv)
if [ "${#packages[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "bootstrap: installing Debian packages: ${packages[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# Reinstall only when the declared dependencies changed since the last install.
stamp=.venv/.kc-sso-installed
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[tests]"
  echo "$wanted" >"$stamp"
fi

# Keycloak needs Java; without one (a laptop) its tests skip, in CI they fail.
if have_java; then
  .venv/bin/python -m devtools.keycloak --prepare-only
fi
