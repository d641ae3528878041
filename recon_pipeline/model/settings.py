"""The mapping file's `settings:` section (SPEC 5): frozen values with the defaults of
the spec, validated by pydantic; an error names the setting.

Strict field types, so YAML's loose scalars are not coerced: `"big"` is no number, `yes` no
count. A whole number is accepted where a float is meant (`lookback_hours: 6`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import ConfigDict, Field, Strict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

_STRICT = ConfigDict(extra="forbid")
Count = Annotated[int, Strict(), Field(ge=1)]  # a batch, a chunk, a limit: 0 would do nothing
Amount = Annotated[float, Strict(), Field(ge=0)]
Switch = Annotated[bool, Strict()]


class SettingsError(ValueError):
    """A setting is unknown or has the wrong type or value; the message names it."""


@dataclass(frozen=True, slots=True, config=_STRICT)
class OutboxSettings:
    batch_size: Count = 500
    max_attempts: Count = 8
    backoff_base_seconds: Amount = 60
    backoff_max_seconds: Amount = 3600


@dataclass(frozen=True, slots=True, config=_STRICT)
class CleanupSettings:
    outbox_retention_days: Amount = 30
    mismatch_retention_days: Amount = 90
    batch_size: Count = 5000


@dataclass(frozen=True, slots=True, config=_STRICT)
class Settings:
    # 0: a partitioned run judges exactly its partition (range), nothing before it.
    lookback_hours: Amount = 48
    settle_seconds: Amount = 60
    chunk_size: Count = 50000
    repair_limit: Count = 10000
    mismatch_rate_warn: Amount = 0.01
    delete_orphans: Switch = False
    outbox: OutboxSettings = OutboxSettings()
    cleanup: CleanupSettings = CleanupSettings()


_SETTINGS = TypeAdapter(Settings)


_WORDS = {"int_type": "a whole number", "int_from_float": "a whole number",
          "float_type": "a number", "bool_type": "true or false"}


def _describe(error: Mapping[str, Any]) -> str:
    """One pydantic error in the mapping's words: where, which setting, what is wrong."""
    *section, name = [str(part) for part in error["loc"]]
    where = ".".join(["settings", *section])
    kind = error["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return f"{where}: unknown setting '{name}'"
    if kind in ("dataclass_type", "dataclass_args_type"):
        return f"{where}: '{name}' must be a mapping"
    if kind == "greater_than_equal":
        return f"{where}: setting '{name}' must be at least {error['ctx']['ge']:g}"
    return f"{where}: setting '{name}' must be {_WORDS.get(kind, 'valid')}"


def parse_settings(raw: Mapping[str, Any]) -> Settings:
    values = raw.get("settings")
    if values is None:
        return Settings()
    if not isinstance(values, dict):
        raise SettingsError("settings: 'settings' must be a mapping")
    # An empty section (`outbox:` with nothing under it) means the defaults.
    values = {key: ({} if key in ("outbox", "cleanup") and value is None else value)
              for key, value in values.items()}
    try:
        return _SETTINGS.validate_python(values)
    except ValidationError as error:
        raise SettingsError(_describe(error.errors()[0])) from None
