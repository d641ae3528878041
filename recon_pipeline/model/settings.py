"""The mapping file's `settings:` section (SPEC 5): frozen values with the defaults of
the spec, and the parser that names a bad or unknown setting."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any


class SettingsError(ValueError):
    """A setting is unknown or has the wrong type; the message names it."""


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    batch_size: int = 500
    max_attempts: int = 8
    backoff_base_seconds: float = 60
    backoff_max_seconds: float = 3600


@dataclass(frozen=True, slots=True)
class CleanupSettings:
    outbox_retention_days: float = 30
    mismatch_retention_days: float = 90
    batch_size: int = 5000


@dataclass(frozen=True, slots=True)
class Settings:
    lookback_hours: float = 48
    settle_seconds: float = 60
    chunk_size: int = 50000
    repair_limit: int = 10000
    mismatch_rate_warn: float = 0.01
    delete_orphans: bool = False
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    cleanup: CleanupSettings = field(default_factory=CleanupSettings)


def _section(raw: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SettingsError(f"{where}: '{key}' must be a mapping")
    return dict(value)


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Instantiate a settings dataclass, naming unknown keys and wrong types."""
    defaults = cls()
    unknown = set(values) - {f.name for f in fields(cls)}
    if unknown:
        raise SettingsError(f"{where}: unknown setting '{sorted(unknown)[0]}'")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        expected = type(getattr(defaults, name))
        if expected in (int, float) and (isinstance(value, bool) or not isinstance(
                value, (int, float)) or value < 0 or (expected is int and value != int(value))):
            raise SettingsError(f"{where}: setting '{name}' must be a non-negative number")
        if expected is bool and not isinstance(value, bool):
            raise SettingsError(f"{where}: setting '{name}' must be true or false")
        kwargs[name] = expected(value) if expected in (int, float) else value
    return cls(**kwargs)


def parse_settings(raw: Mapping[str, Any]) -> Settings:
    values = _section(raw, "settings", "settings")
    outbox = _build(OutboxSettings, _section(values, "outbox", "settings"), "settings.outbox")
    cleanup = _build(CleanupSettings, _section(values, "cleanup", "settings"), "settings.cleanup")
    values.pop("outbox", None)
    values.pop("cleanup", None)
    settings: Settings = _build(Settings, values, "settings")
    for name in ("chunk_size", "repair_limit"):
        if getattr(settings, name) < 1:
            raise SettingsError(f"settings: setting '{name}' must be at least 1")
    return replace(settings, outbox=outbox, cleanup=cleanup)
