"""One client representation as the comparisons read it (attributes are strings)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..settings import Settings
from .urls import AppURLs, path_of, resolve_client_url, same_url

__all__ = ["SESSION_HOST", "ClientView", "points_at", "strings", "text"]

SESSION_HOST = "${application.session.host}"
_WHERE = "Keycloak admin console → Clients → {client} → Settings"


def _attributes(rep: Mapping[str, object]) -> Mapping[str, object]:
    attributes = rep.get("attributes")
    return attributes if isinstance(attributes, dict) else {}


def text(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


@dataclass(frozen=True)
class ClientView:
    """The fields of one client representation the comparison reads."""

    rep: Mapping[str, object]
    settings: Settings
    urls: AppURLs
    server_base: str

    @property
    def where(self) -> str:
        return _WHERE.format(client=self.settings.client_id)

    def attr(self, name: str) -> str | None:
        return text(_attributes(self.rep).get(name))

    @property
    def root_url(self) -> str | None:
        return text(self.rep.get("rootUrl"))

    def resolve(self, value: str | None) -> str | None:
        return resolve_client_url(value, self.root_url, self.server_base)

    @property
    def frontchannel_on(self) -> bool:
        return self.rep.get("frontchannelLogout") is True


def points_at(actual: str, expected: str | None, path: str) -> bool:
    if expected is not None:
        return same_url(actual, expected)
    return path_of(actual).endswith(path)
