"""Write README.rst's configuration table from ``VARIABLES`` (``--check`` only compares).

The table is the documentation of every ``KC_SSO_*`` variable; ``tests/unit/test_settings``
compares it with the parser's table entry by entry.  Run
``python -m devtools.readme_table`` after changing a variable.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from kc_sso_middleware import VARIABLES

README = Path(__file__).resolve().parents[1] / "README.rst"
_HEADER = "   * - Variable\n     - Meaning (accepted values)\n     - Default\n"


def rows() -> list[tuple[str, str, str]]:
    """(variable, meaning with accepted values, default), as the README shows them."""
    return [(v.name, f"{v.meaning} ({v.accepted})", v.default) for v in VARIABLES]


def documented(text: str) -> list[tuple[str, str, str]]:
    """The rows of README.rst's configuration table."""
    start = text.index(_HEADER) + len(_HEADER)
    block = text[start:].split("\n\n", 1)[0]
    pattern = re.compile(
        r"   \* - ``(KC_SSO_[A-Z_]+)``\n     - (.*?)\n     - (.*?)(?=\n   \* |\Z)", re.S
    )
    return [
        (name, " ".join(meaning.split()), " ".join(default.split()))
        for name, meaning, default in pattern.findall(block)
    ]


def render() -> str:
    return "".join(
        f"   * - ``{name}``\n     - {meaning}\n     - {default}\n"
        for name, meaning, default in rows()
    )


def main() -> int:
    text = README.read_text()
    start = text.index(_HEADER) + len(_HEADER)
    end = start + len(text[start:].split("\n\n", 1)[0]) + 1
    if "--check" in sys.argv:
        return 0 if documented(text) == rows() else 1
    README.write_text(text[:start] + render() + text[end:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
