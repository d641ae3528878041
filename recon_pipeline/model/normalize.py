"""Value comparison rules: the one place that decides whether two values agree.

A difference only in representation (Decimal128 vs double, microseconds vs
MongoDB milliseconds, UUID vs its string) is never a mismatch; every real
difference is one. ``normalize`` maps a value to a canonical form for its field
kind; ``values_equal`` compares canonical forms (numerics within a tolerance).
Values that do not fit the kind (a bool in a decimal field, ``"abc"`` in a date
field) normalise to a ``ForeignValue`` so they compare unequal, never raise.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import re
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Final, TypeVar

from bson.binary import UUID_SUBTYPE, Binary
from bson.decimal128 import Decimal128
from bson.objectid import ObjectId
from bson.tz_util import utc as BSON_UTC
from sqlalchemy import types as sqltypes

PLAIN_TYPES = frozenset({str, int, bool})  # equal values of one of these agree, any kind


class ValueKind(enum.StrEnum):
    TEXT = "text"
    INTEGER = "integer"
    DECIMAL = "decimal"
    FLOAT = "float"
    BOOLEAN = "boolean"
    DATETIME = "datetime"
    DATE = "date"
    UUID = "uuid"
    JSON = "json"


class _Missing(enum.Enum):
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing.MISSING
"""The target document has no such field; it equals a source NULL."""


class ValueCoercionError(ValueError):
    """A payload value cannot become the value a source row would hold."""


@dataclasses.dataclass(frozen=True, slots=True)
class NotANumber:
    """Canonical NaN: unlike ``Decimal('NaN')`` it equals itself."""

    def __repr__(self) -> str:
        return "NaN"


NAN: Final = NotANumber()


@dataclasses.dataclass(frozen=True, slots=True)
class ForeignValue:
    """A value that does not fit the field kind; equal only to the same value."""

    type_name: str
    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class JsonBoolean:
    """A JSON bool, kept apart from numbers (Python has ``True == 1``)."""

    value: bool


_T = TypeVar("_T")
# First match wins: Float and Integer are kinds of Numeric to some dialects.
_SQL_KINDS: Final[tuple[tuple[type[sqltypes.TypeEngine[Any]], ValueKind], ...]] = (
    (sqltypes.Boolean, ValueKind.BOOLEAN),
    (sqltypes.Float, ValueKind.FLOAT),
    (sqltypes.Integer, ValueKind.INTEGER),
    (sqltypes.Numeric, ValueKind.DECIMAL),
    (sqltypes.DateTime, ValueKind.DATETIME),
    (sqltypes.Date, ValueKind.DATE),
    (sqltypes.Uuid, ValueKind.UUID),
    (sqltypes.JSON, ValueKind.JSON),
)
_NUMERIC_KINDS: Final = frozenset({ValueKind.INTEGER, ValueKind.DECIMAL, ValueKind.FLOAT})
_UUID_TEXT: Final = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_INTEGER_TEXT: Final = re.compile(r"[+-]?[0-9]+")
# Subtraction under this context is exact for any pair of finite Decimals.
_EXACT: Final = decimal.Context(
    prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[]
)


def kind_for_sql_type(sql_type: sqltypes.TypeEngine[Any]) -> ValueKind:
    """Infer the field kind from a reflected column type (TEXT when unknown)."""
    return next((kind for cls, kind in _SQL_KINDS if isinstance(sql_type, cls)), ValueKind.TEXT)


def kind_from_name(name: str) -> ValueKind:
    """The kind named by a mapping's explicit ``type:``."""
    try:
        return ValueKind(name)
    except ValueError:
        expected = ", ".join(kind.value for kind in ValueKind)
        raise ValueError(f"unknown field type {name!r} (expected one of: {expected})") from None


def normalize(value: object, kind: ValueKind) -> object:
    """The canonical comparable form of ``value`` for a field of ``kind``."""
    if value is None or value is MISSING:
        return None
    if kind in _NUMERIC_KINDS:
        return _canonical_number(value)
    if kind is ValueKind.DATETIME:
        return _canonical_datetime(value)
    if kind is ValueKind.DATE:
        return _canonical_date(value)
    if kind is ValueKind.UUID:
        return _canonical_uuid(value)
    if kind is ValueKind.JSON:
        return _canonical_json(value)
    if kind is ValueKind.BOOLEAN:
        return value if isinstance(value, bool) else _foreign(value)
    # TEXT is exact: no strip, no case fold, no unicode normalisation.
    return value if isinstance(value, str) else _foreign(value)


def values_equal(
    source: object, target: object, kind: ValueKind, tolerance: Decimal = Decimal(0)
) -> bool:
    """Whether a source value and a target value agree (tolerance: numerics only)."""
    if tolerance and (tolerance.is_nan() or tolerance < 0):  # zero, the default, is falsy
        raise ValueError(f"tolerance must be a non-negative number, got {tolerance!r}")
    # Fast paths for the common case (the diff calls this for every field of every row);
    # each gives exactly the answer of the canonical comparison below.
    source_type = type(source)
    if source_type is type(target):
        if source_type in PLAIN_TYPES and source == target:
            return True  # identical str/int/bool values agree under every kind
        if (kind is ValueKind.DATETIME and source_type is dt.datetime
                and source.tzinfo is not None and target.tzinfo is not None):  # type: ignore[attr-defined]
            return _same_millisecond(source, target)  # type: ignore[arg-type]
    left, right = normalize(source, kind), normalize(target, kind)
    if left == right:
        return True
    if (
        kind in _NUMERIC_KINDS
        and isinstance(left, Decimal)
        and isinstance(right, Decimal)
        and left.is_finite()
        and right.is_finite()
    ):
        return _EXACT.abs(_EXACT.subtract(left, right)) <= tolerance
    return False


def quick_equal(kind: ValueKind) -> Callable[[object, object], bool]:
    """A cheap first test for a field of `kind`: True only where `values_equal` is True
    (whatever the tolerance), so a caller compares raw values first and normalises only
    what this does not settle. Built for what the drivers deliver on rows that agree."""
    if kind is ValueKind.DATETIME:
        return _quick_datetime
    if kind in (ValueKind.DECIMAL, ValueKind.FLOAT):
        return _quick_number
    return _quick_plain


def _quick_plain(source: object, target: object) -> bool:
    if source is None:
        return target is None or target is MISSING
    source_type = type(source)
    return source_type is type(target) and source_type in PLAIN_TYPES and source == target


def _quick_datetime(source: object, target: object) -> bool:
    if type(source) is dt.datetime and type(target) is dt.datetime:
        if source.tzinfo is dt.UTC and target.tzinfo is BSON_UTC:  # type: ignore[attr-defined]
            # What psycopg (session in UTC) and pymongo (tz_aware) deliver: both offsets
            # are zero, so the same millisecond is the same fields. Arithmetic between the
            # two would call bson's Python `utcoffset` for every value.
            return (source.microsecond // 1000 == target.microsecond // 1000  # type: ignore[attr-defined]
                    and source.second == target.second  # type: ignore[attr-defined]
                    and source.minute == target.minute  # type: ignore[attr-defined]
                    and source.hour == target.hour  # type: ignore[attr-defined]
                    and source.day == target.day  # type: ignore[attr-defined]
                    and source.month == target.month  # type: ignore[attr-defined]
                    and source.year == target.year)  # type: ignore[attr-defined]
        if source.tzinfo is None or target.tzinfo is None:  # type: ignore[attr-defined]
            return False
        if target.microsecond % 1000 == 0:  # type: ignore[attr-defined]
            return _NO_TIME <= source - target < _ONE_MS  # type: ignore[operator]
        return _same_millisecond(source, target)  # type: ignore[arg-type]
    return _quick_plain(source, target)


def _quick_number(source: object, target: object) -> bool:
    if type(target) is Decimal128 and type(source) is Decimal:
        # The Decimal128's coefficient and exponent, read as `_decimal128_to_decimal`
        # reads them; the source scaled to that exponent (exactly) equals the coefficient.
        high, low = target.__getstate__()
        if (high >> 61) & 3 == 3 or not source.is_finite():
            return False  # special or large-form encodings, NaN, infinities: the long way
        coefficient = ((high & 0x1FFFFFFFFFFFF) << 64) | low
        exponent = ((high >> 49) & 0x3FFF) - 6176
        return bool(_EXACT.scaleb(source, -exponent) == (-coefficient if high >> 63
                                                          else coefficient))
    return _quick_plain(source, target)


def coerce_source_value(value: object, kind: ValueKind) -> object:
    """Turn a JSON payload value into the value a psycopg row would hold."""
    if value is None:
        return None
    coerced = _coerce(value, kind)
    if coerced is None:
        raise ValueCoercionError(f"cannot coerce {_describe(value)} to {kind.value}")
    return coerced


# -- keys ----------------------------------------------------------------------

_CANONICAL_UUID: Final = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}")


def key_of(value: object, kind: ValueKind) -> object:
    """A target key in the source key's terms: the value a source row with this key holds
    (a UUID for its canonical string or a BSON UUID, a plain int for an Int64), or the
    value unchanged when no row of a ``kind`` key can hold it (a stray of another type)."""
    if kind is ValueKind.UUID:
        if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):
            return uuid.UUID(value)
        return value
    if kind is ValueKind.INTEGER and isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return value


def is_key(value: object, kind: ValueKind) -> bool:
    """Whether ``value`` (from ``key_of``) is a key a source row of ``kind`` can hold."""
    if kind is ValueKind.UUID:
        return isinstance(value, uuid.UUID)
    if kind is ValueKind.INTEGER:
        return type(value) is int
    return isinstance(value, str)


def key_forms(value: object, kind: ValueKind) -> list[object]:
    """Every BSON value a source key matches in MongoDB: a UUID is its canonical string
    or a BSON UUID (subtype 4: clients use the standard UUID representation)."""
    if kind is ValueKind.UUID and isinstance(value, uuid.UUID):
        return [str(value), value]
    return [value]


def to_bson_value(value: object, kind: ValueKind) -> object:
    """The value written to MongoDB for a source value of a field of ``kind``."""
    if value is None or value is MISSING:
        return None
    if kind is ValueKind.JSON:
        return value
    if isinstance(value, Decimal):
        try:
            return Decimal128(value)
        except (decimal.Inexact, decimal.InvalidOperation, decimal.Overflow):
            raise ValueCoercionError(
                f"cannot store {_describe(value)} exactly as Decimal128 (34 digits max)"
            ) from None
    if isinstance(value, dt.datetime):
        return _truncate_to_ms(_as_utc(value))
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


# -- canonical forms ----------------------------------------------------------


def _foreign(value: object) -> ForeignValue:
    return ForeignValue(type(value).__name__, repr(value))


def _canonical_number(value: object) -> object:
    number = _to_decimal(value)
    if number is None:
        return _foreign(value)
    if number.is_nan():
        return NAN
    return Decimal(0) if number.is_zero() else number  # -0 equals 0


def _to_decimal(value: object) -> Decimal | None:
    """Exact Decimal for a number or numeric string; bool is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))  # shortest repr, so 0.1 equals Decimal("0.1")
    if isinstance(value, Decimal128):
        return _decimal128_to_decimal(value)  # Decimal128 compares by digits, Decimal by number
    if isinstance(value, str) and value == value.strip() and "_" not in value:
        try:
            return Decimal(value)
        except decimal.InvalidOperation:
            return None
    return None


def _decimal128_to_decimal(value: Decimal128) -> Decimal:
    """`Decimal128.to_decimal` in a fraction of its time (it decodes bit by bit in Python):
    read the BID coefficient and exponent and let C parse them. Special and large-form
    encodings take the library's path."""
    bid = value.bid
    high = int.from_bytes(bid[8:16], "little")
    if (high >> 61) & 3 == 3:
        return value.to_decimal()
    coefficient = ((high & 0x1FFFFFFFFFFFF) << 64) | int.from_bytes(bid[0:8], "little")
    exponent = ((high >> 49) & 0x3FFF) - 6176
    return Decimal(f"{'-' if high >> 63 else ''}{coefficient}E{exponent}")


_ONE_MS = dt.timedelta(milliseconds=1)
_NO_TIME = dt.timedelta(0)


def _same_millisecond(left: dt.datetime, right: dt.datetime) -> bool:
    """Aware datetimes equal once truncated to milliseconds. When one side is already
    whole milliseconds (anything read from MongoDB is), that is one subtraction: the
    other may be at most 999 us later. Four times cheaper than truncating both."""
    if right.microsecond % 1000 == 0:
        return _NO_TIME <= left - right < _ONE_MS
    if left.microsecond % 1000 == 0:
        return _NO_TIME <= right - left < _ONE_MS
    return _truncate_to_ms(left) == _truncate_to_ms(right)


def _as_utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)  # naive values are taken as UTC
    return value.astimezone(dt.UTC)


def _truncate_to_ms(value: dt.datetime) -> dt.datetime:
    # MongoDB keeps milliseconds and its driver floors; rounding would move 23:59:59.9995.
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _to_datetime(value: object) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return _as_utc(value)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    # An ISO string where a date is expected is treated as a representation of
    # that instant (JSON payloads and some writers store them so); a string that
    # names a different instant, or no instant, is still a mismatch.
    parsed = _parse(dt.datetime.fromisoformat, value) if isinstance(value, str) else None
    return None if parsed is None else _as_utc(parsed)


def _canonical_datetime(value: object) -> object:
    instant = _to_datetime(value)
    return _foreign(value) if instant is None else _truncate_to_ms(instant)


def _canonical_date(value: object) -> object:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    instant = _to_datetime(value)
    if instant is None:
        return _foreign(value)
    if instant.time() == dt.time(0):
        return instant.date()  # a date stored as midnight UTC
    return _truncate_to_ms(instant)


def _canonical_uuid(value: object) -> object:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Binary) and value.subtype == UUID_SUBTYPE:
        return str(value.as_uuid())
    if isinstance(value, str) and _UUID_TEXT.fullmatch(value):
        return str(uuid.UUID(value))
    return _foreign(value)


def _canonical_json(value: object) -> object:
    """JSON as data: key order ignored, list order kept, numbers by value."""
    if isinstance(value, Mapping):
        return {key: _canonical_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical_json(item) for item in value]
    if isinstance(value, bool):
        return JsonBoolean(value)
    if isinstance(value, int | float | Decimal | Decimal128):
        return _canonical_number(value)
    return value


# -- payload coercion: None means the value cannot be coerced ---------------


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _coerce(value: object, kind: ValueKind) -> object:
    if kind is ValueKind.TEXT:
        return value if isinstance(value, str) else None
    if kind is ValueKind.BOOLEAN:
        return value if isinstance(value, bool) else None
    if kind is ValueKind.JSON:
        return value if isinstance(value, dict | list | str | int | float) else None
    if kind in _NUMERIC_KINDS:
        return _coerce_number(value, kind)
    if kind is ValueKind.UUID and isinstance(value, uuid.UUID | str):
        return value if isinstance(value, uuid.UUID) else _parse(uuid.UUID, value)
    if kind is ValueKind.DATETIME and isinstance(value, dt.datetime | str):
        return _to_datetime(value)
    if kind is ValueKind.DATE and isinstance(value, str):
        return _parse(dt.date.fromisoformat, value)
    if kind is ValueKind.DATE and type(value) is dt.date:
        return value
    return None


def _parse(parser: Callable[[str], _T], text: str) -> _T | None:
    try:
        return parser(text)
    except ValueError:
        return None


def _coerce_number(value: object, kind: ValueKind) -> object:
    if kind is ValueKind.INTEGER and isinstance(value, str) and not _INTEGER_TEXT.fullmatch(value):
        return None  # "1e3" or "3.0" is not how anyone writes an integer column
    number = _to_decimal(value)
    if number is None or number.is_snan():  # no row holds a signalling NaN
        return None
    if kind is ValueKind.DECIMAL:
        return number
    if kind is ValueKind.FLOAT:
        return float(number)
    if not number.is_finite() or number != number.to_integral_value():
        return None
    return int(number)


# --- key order -----------------------------------------------------------------------

_TYPE_RANK = {type(None): 0, float: 1, Decimal: 1, str: 2, dict: 3, list: 4, bool: 8,
              dt.datetime: 9}


def order_key(value: Any) -> tuple[Any, ...]:
    """MongoDB's cross-type sort order (numbers before strings before BSON binary before
    ObjectId, ...), so keys of mixed types in a collection merge in the order the server
    returns them. A UUID sorts as its canonical string: the target is read so that both of
    its forms arrive in that order (stores/target.py)."""
    value_type = type(value)
    if value_type is str:
        return (2, value)
    if value_type is tuple:
        return tuple(order_key(v) for v in value)
    if isinstance(value, int) and value_type is not bool:  # Int64 too
        return (1, int(value))
    if value_type is uuid.UUID:
        return (2, str(value))
    if value_type is ObjectId:
        return (7, value.binary)
    if isinstance(value, Decimal128):
        return (1, value.to_decimal())
    if isinstance(value, bytes):  # bson Binary: length, subtype, then bytes
        return (5, len(value), getattr(value, "subtype", 0), bytes(value))
    rank = _TYPE_RANK.get(value_type, 6)
    return (rank, value if rank in (1, 2, 9) else repr(value))


class _Placed:
    """A key of another type than the source key's, placed by `order_key` among plain ones
    (Python calls its reflected comparison when an int or str meets it)."""

    __slots__ = ("order",)

    def __init__(self, value: Any) -> None:
        self.order = order_key(value)

    @staticmethod
    def _order(other: Any) -> Any:
        return other.order if type(other) is _Placed else order_key(other)

    def __lt__(self, other: Any) -> bool:
        return bool(self.order < self._order(other))

    def __le__(self, other: Any) -> bool:
        return bool(self.order <= self._order(other))

    def __gt__(self, other: Any) -> bool:
        return bool(self.order > self._order(other))

    def __ge__(self, other: Any) -> bool:
        return bool(self.order >= self._order(other))

    def __eq__(self, other: object) -> bool:
        return bool(self.order == self._order(other))

    def __hash__(self) -> int:
        return hash(self.order)

    def __repr__(self) -> str:
        return f"_Placed({self.order!r})"


def merge_order(value: Any, kind: ValueKind) -> Any:
    """A stand-in for `order_key(value)` that costs nothing for the keys a source column of
    `kind` holds: the value itself (a UUID: its canonical string, as `order_key` sorts it).
    Stand-ins compare with each other exactly as their values' `order_key`s do."""
    value_type = type(value)
    if value_type is str if kind is not ValueKind.INTEGER else value_type is int:
        return value  # text (and a UUID's canonical text, a stray string) / a plain int
    if value_type is uuid.UUID and kind is ValueKind.UUID:
        return str(value)
    return _Placed(value)
