"""``python -m kc_sso_middleware check …``: the deployment check (also ``kc-sso-check``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

_USAGE = """\
usage: python -m kc_sso_middleware check [options]

commands:
  check    check this deployment's Keycloak, store and client settings (--help for options)
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "check":
        from .doctor.cli import main as check

        return check(args[1:], prog="python -m kc_sso_middleware check")
    sys.stdout.write(_USAGE) if args[:1] in (["-h"], ["--help"]) else sys.stderr.write(_USAGE)
    return 0 if args[:1] in (["-h"], ["--help"]) else 2


if __name__ == "__main__":
    sys.exit(main())
