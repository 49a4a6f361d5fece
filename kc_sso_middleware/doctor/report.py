"""What ``kc-sso-check`` found, as plain values: findings, and the report that holds them.

A :class:`Finding` has a stable machine ``code`` (every code is listed with its meaning in
:data:`~kc_sso_middleware.doctor.codes.CODES`; an unlisted one is an error), a severity,
a message in plain words and, unless all is well, a fix.  The report's exit code is 1 when
any finding is a problem, else 2 when a check that was asked for could not be made (the
issuer or the store unreachable, the admin API refused), else 0.
"""

from __future__ import annotations

import enum
import json
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .codes import CODES

__all__ = ["EXIT_OK", "EXIT_PROBLEM", "EXIT_UNCHECKED", "Finding", "Report", "Severity"]

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_UNCHECKED = 2

#: version of the ``--json`` document's shape
JSON_VERSION = 1


class Severity(str, enum.Enum):
    """How much a finding matters."""

    #: checked, and right
    OK = "ok"
    #: for the reader: the URLs Keycloak needs, a check that was not asked for
    INFO = "info"
    #: works, but probably not as intended (never changes the exit code)
    WARN = "warn"
    #: wrong: single sign-out fails or is weakened (exit 1)
    PROBLEM = "problem"
    #: asked for, but could not be checked (exit 2, unless there is a problem too)
    UNCHECKED = "unchecked"


_LABELS = {
    Severity.OK: "ok",
    Severity.INFO: "info",
    Severity.WARN: "WARN",
    Severity.PROBLEM: "PROBLEM",
    Severity.UNCHECKED: "UNCHECKED",
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the check found."""

    code: str
    severity: Severity
    message: str
    fix: str = ""
    #: machine-readable facts behind the message (never a secret)
    details: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"unlisted finding code {self.code!r} (add it to doctor.codes)")

    @property
    def area(self) -> str:
        return CODES[self.code].area

    def as_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "area": self.area,
            "message": self.message,
            "fix": self.fix,
            "details": dict(self.details),
        }


_AREA_TITLES = {
    "config": "Configuration",
    "provider": "Keycloak's discovery document and keys",
    "store": "Revocation store",
    "urls": "This app's URLs",
    "client": "The client in Keycloak (admin API)",
    "realm": "Realm and server",
    "explain": "Known failure texts",
}


@dataclass(frozen=True)
class Report:
    """Every finding of one run, in the order they were made, and what was checked."""

    findings: tuple[Finding, ...]
    #: what was checked (issuer, client id, app URL, store, URLs for Keycloak...)
    context: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def of(cls, findings: Iterable[Finding], **context: object) -> Report:
        return cls(tuple(findings), context)

    def codes(self, severity: Severity | None = None) -> list[str]:
        return [f.code for f in self.findings if severity is None or f.severity is severity]

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity is severity)

    @property
    def exit_code(self) -> int:
        if self.count(Severity.PROBLEM):
            return EXIT_PROBLEM
        if self.count(Severity.UNCHECKED):
            return EXIT_UNCHECKED
        return EXIT_OK

    @property
    def result(self) -> str:
        return {EXIT_OK: "ok", EXIT_PROBLEM: "problem", EXIT_UNCHECKED: "unchecked"}[self.exit_code]

    def as_dict(self) -> dict[str, object]:
        return {
            "version": JSON_VERSION,
            "result": self.result,
            "exit_code": self.exit_code,
            "summary": {s.value: self.count(s) for s in Severity},
            "context": dict(self.context),
            "findings": [f.as_dict() for f in self.findings],
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=False, default=str)

    def to_text(self, width: int = 100) -> str:
        lines: list[str] = []
        shown = [
            (k, v) for k, v in self.context.items() if isinstance(v, str | int | float) and v != ""
        ]
        if shown:
            lines.append("kc_sso_middleware check")
            lines.extend(f"  {key.replace('_', ' ')}: {value}" for key, value in shown)
        areas: list[str] = []
        for finding in self.findings:
            if finding.area not in areas:
                areas.append(finding.area)
        for area in areas:
            lines.append("")
            lines.append(_AREA_TITLES.get(area, area))
            for finding in (f for f in self.findings if f.area == area):
                lines.extend(_finding_lines(finding, width))
        lines.append("")
        counts = ", ".join(f"{self.count(s)} {s.value}" for s in Severity if s is not Severity.INFO)
        verdict = {
            EXIT_OK: "everything needed is right",
            EXIT_PROBLEM: "there are problems to fix",
            EXIT_UNCHECKED: "some checks could not be made",
        }[self.exit_code]
        lines.append(f"Result: {verdict} ({counts}); exit {self.exit_code}")
        return "\n".join(lines) + "\n"


def _finding_lines(finding: Finding, width: int) -> list[str]:
    label = f"  {_LABELS[finding.severity]:<9} "
    indent = " " * len(label)
    head = f"[{finding.code}] {finding.message}"
    out = _wrap(head, width, label, indent)
    if finding.fix:
        out += _wrap(f"fix: {finding.fix}", width, indent, indent + "     ")
    return out


def _wrap(text: str, width: int, first: str, rest: str) -> list[str]:
    lines: list[str] = []
    for n, paragraph in enumerate(text.split("\n")):
        lines += textwrap.wrap(
            paragraph,
            width,
            initial_indent=first if n == 0 else rest,
            subsequent_indent=rest,
            break_long_words=False,
            break_on_hyphens=False,
        ) or [rest]
    return lines
