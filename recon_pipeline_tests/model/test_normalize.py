"""Golden corpus for the comparison rules (SPEC 6 "Comparison").

EQUAL pairs differ only in representation and must compare equal; MUTATED
pairs hold a real difference and must not. Each pair is (kind, source value as
a psycopg row holds it, target value as pymongo reads it, tolerance).
"""

from __future__ import annotations

import ast
import datetime as dt
import re
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import bson
import pytest
import sqlalchemy as sa
from bson.binary import Binary, UuidRepresentation
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from sqlalchemy.dialects import postgresql as pg

from recon_pipeline.model import normalize as normalize_module
from recon_pipeline.model.normalize import (
    MISSING,
    ValueCoercionError,
    ValueKind,
    coerce_source_value,
    kind_for_sql_type,
    kind_from_name,
    normalize,
    to_bson_value,
    values_equal,
)

K = ValueKind
UTC = dt.UTC
PLUS_2 = dt.timezone(dt.timedelta(hours=2))
U = uuid.UUID("6f1c2e4a-9b3d-4c8e-a1f2-3b4c5d6e7f80")
OTHER_U = uuid.UUID("6f1c2e4a-9b3d-4c8e-a1f2-3b4c5d6e7f81")
NOON = dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
NOON_MS = dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
DAY = dt.date(2024, 5, 1)
TOL = Decimal("0.005")


def pair(
    name: str, kind: ValueKind, source: object, target: object, tolerance: Decimal = Decimal(0)
) -> Any:
    return pytest.param(kind, source, target, tolerance, id=name)


EQUAL = [
    # numerics: Decimal128 vs double vs int vs numeric string
    pair("decimal-vs-decimal128-same-digits", K.DECIMAL, Decimal("10.50"), Decimal128("10.50")),
    pair("decimal-vs-decimal128-other-scale", K.DECIMAL, Decimal("10.50"), Decimal128("10.5")),
    pair("decimal-vs-double-0.1", K.DECIMAL, Decimal("0.1"), 0.1),
    pair("decimal-vs-int", K.DECIMAL, Decimal("10.00"), 10),
    pair("decimal-vs-int64", K.DECIMAL, Decimal("7"), Int64(7)),
    pair("decimal-vs-numeric-string", K.DECIMAL, Decimal("12.34"), "12.340"),
    pair("decimal-vs-exponent-string", K.DECIMAL, Decimal("1200"), "1.2E3"),
    pair(
        "decimal-34-digits",
        K.DECIMAL,
        Decimal("1234567890123456789012.345678901234"),
        Decimal128("1234567890123456789012.345678901234"),
    ),
    pair("tolerance-inside-above", K.DECIMAL, Decimal("10.000"), Decimal128("10.004"), TOL),
    pair("tolerance-on-edge-above", K.DECIMAL, Decimal("10.000"), Decimal128("10.005"), TOL),
    pair("tolerance-on-edge-below", K.DECIMAL, Decimal("10.000"), 9.995, TOL),
    pair("tolerance-inside-below", K.DECIMAL, Decimal("10.000"), "9.9951", TOL),
    pair("negative-zero-vs-zero", K.DECIMAL, Decimal("-0"), 0),
    pair("zero-vs-decimal128-negative-zero", K.DECIMAL, Decimal("0.00"), Decimal128("-0")),
    pair("double-negative-zero", K.FLOAT, 0.0, -0.0),
    pair("nan-vs-decimal128-nan", K.DECIMAL, Decimal("NaN"), Decimal128("NaN")),
    pair("nan-vs-double-nan", K.DECIMAL, Decimal("NaN"), float("nan")),
    pair("infinity-vs-double-infinity", K.DECIMAL, Decimal("Infinity"), float("inf")),
    pair("decimal-null-vs-missing", K.DECIMAL, None, MISSING),
    pair("integer-vs-int64", K.INTEGER, 42, Int64(42)),
    pair("integer-vs-integral-double", K.INTEGER, 3, 3.0),
    pair("integer-vs-decimal128", K.INTEGER, 3, Decimal128("3.00")),
    pair("integer-vs-numeric-string", K.INTEGER, 3, "3"),
    pair("float-vs-same-double", K.FLOAT, 0.1, 0.1),
    pair("float-vs-decimal128", K.FLOAT, 2.5, Decimal128("2.50")),
    # text
    pair("text-same", K.TEXT, "Müller", "Müller"),
    pair("text-empty", K.TEXT, "", ""),
    pair("text-null-vs-missing", K.TEXT, None, MISSING),
    pair("text-null-vs-null", K.TEXT, None, None),
    # boolean
    pair("boolean-true", K.BOOLEAN, True, True),
    pair("boolean-false", K.BOOLEAN, False, False),
    # datetimes: UTC, truncated to milliseconds, naive taken as UTC
    pair("timestamptz-micros-vs-bson-millis", K.DATETIME, NOON, NOON_MS),
    pair("truncation-not-rounding", K.DATETIME, NOON.replace(microsecond=123999), NOON_MS),
    pair("aware-vs-naive-target", K.DATETIME, NOON, NOON_MS.replace(tzinfo=None)),
    pair("naive-source-vs-aware-target", K.DATETIME, NOON.replace(tzinfo=None), NOON_MS),
    pair(
        "plus-02-offset-vs-utc",
        K.DATETIME,
        dt.datetime(2024, 5, 1, 14, 0, tzinfo=PLUS_2),
        dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
    ),
    pair("datetime-vs-iso-string-z", K.DATETIME, NOON, "2024-05-01T12:00:00.123Z"),
    pair("datetime-vs-iso-string-offset", K.DATETIME, NOON, "2024-05-01T14:00:00.123+02:00"),
    pair("datetime-null-vs-missing", K.DATETIME, None, MISSING),
    # dates
    pair("date-vs-midnight-utc", K.DATE, DAY, dt.datetime(2024, 5, 1, tzinfo=UTC)),
    pair("date-vs-naive-midnight", K.DATE, DAY, dt.datetime(2024, 5, 1)),
    pair("date-vs-iso-date-string", K.DATE, DAY, "2024-05-01"),
    pair("date-vs-date", K.DATE, DAY, dt.date(2024, 5, 1)),
    # uuids
    pair("uuid-vs-canonical-string", K.UUID, U, str(U)),
    pair("uuid-vs-upper-case-string", K.UUID, U, str(U).upper()),
    pair("uuid-vs-binary-subtype-4", K.UUID, U, Binary.from_uuid(U)),
    pair("uuid-vs-uuid", K.UUID, U, uuid.UUID(str(U))),
    pair("uuid-null-vs-missing", K.UUID, None, MISSING),
    # json: data, not text
    pair("json-key-order", K.JSON, {"a": 1, "b": 2}, {"b": 2, "a": 1}),
    pair(
        "json-nested-key-order",
        K.JSON,
        {"x": {"p": [1, {"q": 1, "r": 2}]}},
        {"x": {"p": [1, {"r": 2, "q": 1}]}},
    ),
    pair("json-int-vs-double", K.JSON, {"n": 1}, {"n": 1.0}),
    pair("json-double-vs-decimal128", K.JSON, {"amount": 10.5}, {"amount": Decimal128("10.50")}),
    pair("json-list-same-order", K.JSON, [1, "two", None, True], [1, "two", None, True]),
    pair("json-scalar-string", K.JSON, "plain", "plain"),
    pair("json-null-vs-missing", K.JSON, None, MISSING),
]

MUTATED = [
    pair("decimal-value-differs", K.DECIMAL, Decimal("10.50"), Decimal128("10.51")),
    pair("decimal-no-tolerance-tiny-diff", K.DECIMAL, Decimal("10.00"), 10.001),
    pair("tolerance-just-over-above", K.DECIMAL, Decimal("10.000"), Decimal128("10.0051"), TOL),
    pair("tolerance-just-over-below", K.DECIMAL, Decimal("10.000"), Decimal("9.9949"), TOL),
    pair("tolerance-far-over", K.DECIMAL, Decimal("10.000"), 10.01, TOL),
    pair("nan-vs-zero", K.DECIMAL, Decimal("NaN"), 0),
    pair("nan-vs-decimal128-number", K.DECIMAL, Decimal("NaN"), Decimal128("1.5"), TOL),
    pair("infinity-vs-negative-infinity", K.DECIMAL, Decimal("Infinity"), float("-inf"), TOL),
    pair("decimal-one-vs-true", K.DECIMAL, Decimal("1"), True),
    pair("decimal-zero-vs-false", K.DECIMAL, Decimal("0"), False),
    pair("decimal-vs-word", K.DECIMAL, Decimal("10"), "ten"),
    pair("decimal-vs-padded-string", K.DECIMAL, Decimal("10"), " 10"),
    pair("decimal-null-vs-zero", K.DECIMAL, None, 0),
    pair("decimal-value-vs-missing", K.DECIMAL, Decimal("1"), MISSING),
    pair("integer-vs-fraction", K.INTEGER, 3, 3.5),
    pair("integer-off-by-one", K.INTEGER, 3, Int64(4)),
    pair("integer-one-vs-true", K.INTEGER, 1, True),
    pair("float-differs", K.FLOAT, 0.1, 0.2),
    pair("text-composed-vs-decomposed", K.TEXT, "Caf\u00e9", "Cafe\u0301"),
    pair("text-trailing-whitespace", K.TEXT, "Smith", "Smith "),
    pair("text-leading-whitespace", K.TEXT, "Smith", " Smith"),
    pair("text-case", K.TEXT, "smith@example.com", "Smith@example.com"),
    pair("text-null-vs-empty", K.TEXT, None, ""),
    pair("text-empty-vs-missing", K.TEXT, "", MISSING),
    pair("text-vs-number", K.TEXT, "5", 5),
    pair("boolean-flipped", K.BOOLEAN, True, False),
    pair("boolean-true-vs-one", K.BOOLEAN, True, 1),
    pair("boolean-false-vs-zero", K.BOOLEAN, False, 0),
    pair("boolean-false-vs-null", K.BOOLEAN, False, None),
    pair(
        "datetime-truncated-vs-next-ms",
        K.DATETIME,
        NOON.replace(microsecond=123999),
        NOON.replace(microsecond=124000),
    ),
    pair("datetime-one-ms-earlier", K.DATETIME, NOON, NOON.replace(microsecond=122000)),
    pair(
        "datetime-offset-not-applied",
        K.DATETIME,
        dt.datetime(2024, 5, 1, 14, 0, tzinfo=PLUS_2),
        dt.datetime(2024, 5, 1, 14, 0, tzinfo=UTC),
    ),
    pair(
        "naive-target-is-utc-not-local",
        K.DATETIME,
        dt.datetime(2024, 5, 1, 12, 0, tzinfo=PLUS_2),
        dt.datetime(2024, 5, 1, 12, 0),
    ),
    pair("datetime-iso-string-other-instant", K.DATETIME, NOON, "2024-05-01T12:00:01.123Z"),
    pair("datetime-garbage-string", K.DATETIME, NOON, "not-a-date"),
    pair("datetime-vs-missing", K.DATETIME, NOON, MISSING),
    pair("date-vs-next-midnight", K.DATE, DAY, dt.datetime(2024, 5, 2, tzinfo=UTC)),
    pair("date-vs-noon", K.DATE, DAY, dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
    pair("date-vs-local-midnight-plus-02", K.DATE, DAY, dt.datetime(2024, 5, 1, tzinfo=PLUS_2)),
    pair("uuid-differs", K.UUID, U, str(OTHER_U)),
    pair("uuid-vs-unhyphenated-hex", K.UUID, U, U.hex),
    pair(
        "uuid-vs-legacy-binary-subtype-3",
        K.UUID,
        U,
        Binary.from_uuid(U, UuidRepresentation.PYTHON_LEGACY),
    ),
    pair("uuid-vs-null", K.UUID, U, None),
    pair("json-list-order", K.JSON, [1, 2], [2, 1]),
    pair("json-nested-value", K.JSON, {"x": {"p": [1, 2]}}, {"x": {"p": [1, 3]}}),
    pair("json-extra-key", K.JSON, {"a": 1}, {"a": 1, "b": 2}),
    pair("json-null-member-vs-absent", K.JSON, {"a": None}, {}),
    pair("json-true-vs-one", K.JSON, {"a": True}, {"a": 1}),
    pair("json-string-vs-number", K.JSON, {"a": "1"}, {"a": 1}),
    pair("json-null-vs-empty-object", K.JSON, None, {}),
]


@pytest.mark.parametrize(("kind", "source", "target", "tolerance"), EQUAL)
def test_equal_pairs_compare_equal(
    kind: ValueKind, source: object, target: object, tolerance: Decimal
) -> None:
    assert values_equal(source, target, kind, tolerance) is True


@pytest.mark.parametrize(("kind", "source", "target", "tolerance"), MUTATED)
def test_mutated_pairs_compare_different(
    kind: ValueKind, source: object, target: object, tolerance: Decimal
) -> None:
    assert values_equal(source, target, kind, tolerance) is False


@pytest.mark.parametrize(("kind", "source", "target", "tolerance"), EQUAL + MUTATED)
def test_comparison_is_symmetric(
    kind: ValueKind, source: object, target: object, tolerance: Decimal
) -> None:
    assert values_equal(source, target, kind, tolerance) is values_equal(
        target, source, kind, tolerance
    )


def test_corpus_covers_every_kind_both_ways() -> None:
    assert len(EQUAL) + len(MUTATED) >= 50
    kinds = set(ValueKind)
    assert {p.values[0] for p in EQUAL} == kinds
    assert {p.values[0] for p in MUTATED} == kinds


@pytest.mark.parametrize(("kind", "source", "target", "tolerance"), EQUAL + MUTATED)
def test_what_we_write_compares_equal_to_the_source(
    kind: ValueKind, source: object, target: object, tolerance: Decimal
) -> None:
    written = to_bson_value(source, kind)
    assert values_equal(source, written, kind) is True
    read_back = bson.decode(bson.encode({"v": written}))["v"]
    assert values_equal(source, read_back, kind) is True


# -- normalize -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        pytest.param(K.TEXT, None, None, id="null"),
        pytest.param(K.TEXT, MISSING, None, id="missing"),
        pytest.param(K.DECIMAL, Decimal128("10.50"), Decimal("10.50"), id="decimal128"),
        pytest.param(K.DECIMAL, 0.1, Decimal("0.1"), id="double-shortest-repr"),
        pytest.param(K.DATETIME, NOON.astimezone(PLUS_2), NOON_MS, id="utc-millis"),
        pytest.param(K.DATE, dt.datetime(2024, 5, 1), DAY, id="midnight-to-date"),
        pytest.param(K.UUID, Binary.from_uuid(U), str(U), id="binary-uuid"),
        pytest.param(K.UUID, str(U).upper(), str(U), id="upper-uuid"),
        pytest.param(K.TEXT, "e\u0301 ", "e\u0301 ", id="text-untouched"),
    ],
)
def test_normalize_gives_canonical_form(kind: ValueKind, value: object, expected: object) -> None:
    result = normalize(value, kind)
    assert result == expected
    assert type(result) is type(expected)


def test_normalized_nan_equals_itself_and_negative_zero_is_zero() -> None:
    assert normalize(Decimal("NaN"), K.DECIMAL) == normalize(float("nan"), K.DECIMAL)
    assert str(normalize(Decimal("-0.00"), K.DECIMAL)) == "0"


def test_negative_tolerance_is_rejected() -> None:
    with pytest.raises(
        ValueError, match=re.escape("tolerance must be a non-negative number, got Decimal('-1')")
    ):
        values_equal(1, 1, K.DECIMAL, Decimal(-1))


# -- coerce_source_value -------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        pytest.param(K.DECIMAL, "12.30", Decimal("12.30"), id="decimal-from-string"),
        pytest.param(K.DECIMAL, 12.3, Decimal("12.3"), id="decimal-from-double"),
        pytest.param(K.DECIMAL, 5, Decimal(5), id="decimal-from-int"),
        pytest.param(K.INTEGER, 42, 42, id="integer"),
        pytest.param(K.INTEGER, "-42", -42, id="integer-from-string"),
        pytest.param(K.INTEGER, 3.0, 3, id="integer-from-integral-double"),
        pytest.param(K.FLOAT, "1.5", 1.5, id="float-from-string"),
        pytest.param(K.FLOAT, 2, 2.0, id="float-from-int"),
        pytest.param(K.BOOLEAN, False, False, id="boolean"),
        pytest.param(K.DATETIME, "2024-05-01T12:00:00.123456Z", NOON, id="datetime-z-keeps-micros"),
        pytest.param(
            K.DATETIME, "2024-05-01T14:00:00.123456+02:00", NOON, id="datetime-offset-to-utc"
        ),
        pytest.param(K.DATETIME, "2024-05-01T12:00:00.123456", NOON, id="datetime-naive-as-utc"),
        pytest.param(K.DATE, "2024-05-01", DAY, id="date"),
        pytest.param(K.UUID, str(U), U, id="uuid"),
        pytest.param(K.UUID, str(U).upper(), U, id="uuid-upper"),
        pytest.param(K.TEXT, "as is ", "as is ", id="text-untouched"),
        pytest.param(K.JSON, {"a": [1, {"b": None}]}, {"a": [1, {"b": None}]}, id="json-object"),
        pytest.param(K.JSON, [1, 2], [1, 2], id="json-array"),
    ],
)
def test_coerce_source_value(kind: ValueKind, value: object, expected: object) -> None:
    result = coerce_source_value(value, kind)
    assert result == expected
    assert type(result) is type(expected)
    if isinstance(result, Decimal):
        assert str(result) == str(expected)  # digits kept
    if isinstance(result, dt.datetime):
        assert result.tzinfo == UTC


def test_coerce_nan_decimal() -> None:
    result = coerce_source_value("NaN", K.DECIMAL)
    assert isinstance(result, Decimal)
    assert result.is_nan()


@pytest.mark.parametrize("kind", list(ValueKind))
def test_coerce_null_stays_null(kind: ValueKind) -> None:
    assert coerce_source_value(None, kind) is None


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        pytest.param(K.DECIMAL, "abc", "cannot coerce 'abc' to decimal", id="decimal-word"),
        pytest.param(K.DECIMAL, True, "cannot coerce True to decimal", id="decimal-bool"),
        pytest.param(K.DECIMAL, [1], "cannot coerce [1] to decimal", id="decimal-list"),
        pytest.param(K.DECIMAL, "sNaN", "cannot coerce 'sNaN' to decimal", id="decimal-snan"),
        pytest.param(
            K.DATETIME, "not-a-date", "cannot coerce 'not-a-date' to datetime", id="datetime-word"
        ),
        pytest.param(
            K.DATETIME, 1714564800, "cannot coerce 1714564800 to datetime", id="datetime-epoch"
        ),
        pytest.param(K.TEXT, {"a": 1}, "cannot coerce {'a': 1} to text", id="text-dict"),
        pytest.param(K.TEXT, 5, "cannot coerce 5 to text", id="text-number"),
        pytest.param(K.INTEGER, True, "cannot coerce True to integer", id="integer-bool"),
        pytest.param(K.INTEGER, 3.5, "cannot coerce 3.5 to integer", id="integer-fraction"),
        pytest.param(
            K.INTEGER, "1e3", "cannot coerce '1e3' to integer", id="integer-exponent-string"
        ),
        pytest.param(K.FLOAT, "abc", "cannot coerce 'abc' to float", id="float-word"),
        pytest.param(K.BOOLEAN, 1, "cannot coerce 1 to boolean", id="boolean-one"),
        pytest.param(K.BOOLEAN, "true", "cannot coerce 'true' to boolean", id="boolean-string"),
        pytest.param(
            K.DATE, "2024-13-01", "cannot coerce '2024-13-01' to date", id="date-bad-month"
        ),
        pytest.param(K.DATE, 20240501, "cannot coerce 20240501 to date", id="date-number"),
        pytest.param(K.UUID, "not-a-uuid", "cannot coerce 'not-a-uuid' to uuid", id="uuid-word"),
        pytest.param(K.UUID, 123, "cannot coerce 123 to uuid", id="uuid-number"),
        pytest.param(
            K.TEXT,
            {"k": "x" * 100},
            "cannot coerce {'k': '" + "x" * 70 + "... to text",
            id="long-value-shortened",
        ),
    ],
)
def test_coerce_impossible_value_raises(kind: ValueKind, value: object, message: str) -> None:
    with pytest.raises(ValueCoercionError) as caught:
        coerce_source_value(value, kind)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


# -- to_bson_value -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        # Decimal128 equality compares digits, so these also pin the exact scale.
        pytest.param(
            K.DECIMAL, Decimal("10.50"), Decimal128("10.50"), id="decimal128-keeps-digits"
        ),
        pytest.param(K.DECIMAL, Decimal("NaN"), Decimal128("NaN"), id="decimal128-nan"),
        pytest.param(
            K.DECIMAL, Decimal("-Infinity"), Decimal128("-Infinity"), id="decimal128-infinity"
        ),
        pytest.param(K.DATETIME, NOON, NOON_MS, id="datetime-truncated-to-ms"),
        pytest.param(
            K.DATETIME,
            NOON.replace(microsecond=999999),
            NOON.replace(microsecond=999000),
            id="datetime-not-rounded",
        ),
        pytest.param(K.DATETIME, NOON.replace(tzinfo=None), NOON_MS, id="naive-taken-as-utc"),
        pytest.param(K.DATETIME, NOON.astimezone(PLUS_2), NOON_MS, id="offset-converted-to-utc"),
        pytest.param(K.DATE, DAY, dt.datetime(2024, 5, 1, tzinfo=UTC), id="date-at-midnight-utc"),
        pytest.param(K.UUID, U, str(U), id="uuid-to-canonical-string"),
        pytest.param(K.TEXT, "Cafe\u0301 ", "Cafe\u0301 ", id="text-unchanged"),
        pytest.param(K.INTEGER, 7, 7, id="integer-unchanged"),
        pytest.param(K.FLOAT, 0.1, 0.1, id="float-unchanged"),
        pytest.param(K.BOOLEAN, True, True, id="boolean-unchanged"),
        pytest.param(K.TEXT, None, None, id="null"),
        pytest.param(K.TEXT, MISSING, None, id="missing"),
    ],
)
def test_to_bson_value(kind: ValueKind, value: object, expected: object) -> None:
    result = to_bson_value(value, kind)
    assert result == expected
    assert type(result) is type(expected)
    if isinstance(result, Decimal128):
        assert str(result) == str(expected)
    if isinstance(result, dt.datetime):
        assert result.tzinfo == UTC


def test_to_bson_json_is_written_as_is() -> None:
    document = {"b": [1, {"c": 2.5}], "a": None}
    assert to_bson_value(document, K.JSON) is document


def test_to_bson_decimal_beyond_34_digits_raises() -> None:
    value = Decimal("1." + "1" * 40)
    with pytest.raises(ValueCoercionError) as caught:
        to_bson_value(value, K.DECIMAL)
    assert str(caught.value) == (
        "cannot store Decimal('1.1111111111111111111111111111111111111111') "
        "exactly as Decimal128 (34 digits max)"
    )


# -- kinds ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql_type", "expected"),
    [
        pytest.param(sa.Numeric(12, 2), K.DECIMAL, id="Numeric"),
        pytest.param(pg.NUMERIC(), K.DECIMAL, id="pg-NUMERIC"),
        pytest.param(sa.Integer(), K.INTEGER, id="Integer"),
        pytest.param(sa.BigInteger(), K.INTEGER, id="BigInteger"),
        pytest.param(sa.SmallInteger(), K.INTEGER, id="SmallInteger"),
        pytest.param(sa.Float(), K.FLOAT, id="Float"),
        pytest.param(pg.REAL(), K.FLOAT, id="pg-REAL"),
        pytest.param(pg.DOUBLE_PRECISION(), K.FLOAT, id="pg-DOUBLE_PRECISION"),
        pytest.param(sa.Double(), K.FLOAT, id="Double"),
        pytest.param(sa.DateTime(timezone=True), K.DATETIME, id="DateTime"),
        pytest.param(pg.TIMESTAMP(timezone=True), K.DATETIME, id="pg-TIMESTAMP"),
        pytest.param(sa.Date(), K.DATE, id="Date"),
        pytest.param(sa.Boolean(), K.BOOLEAN, id="Boolean"),
        pytest.param(sa.Uuid(), K.UUID, id="Uuid"),
        pytest.param(pg.UUID(), K.UUID, id="pg-UUID"),
        pytest.param(sa.JSON(), K.JSON, id="JSON"),
        pytest.param(pg.JSON(), K.JSON, id="pg-JSON"),
        pytest.param(pg.JSONB(), K.JSON, id="pg-JSONB"),
        pytest.param(sa.Text(), K.TEXT, id="Text"),
        pytest.param(sa.String(50), K.TEXT, id="String"),
        pytest.param(sa.CHAR(3), K.TEXT, id="CHAR"),
        pytest.param(sa.Enum("a", "b", name="e"), K.TEXT, id="Enum"),
    ],
)
def test_kind_for_sql_type(sql_type: sa.types.TypeEngine[Any], expected: ValueKind) -> None:
    assert kind_for_sql_type(sql_type) is expected


@pytest.mark.parametrize("kind", list(ValueKind))
def test_kind_from_name_accepts_every_kind(kind: ValueKind) -> None:
    assert kind_from_name(kind.value) is kind


@pytest.mark.parametrize("name", ["money", "Decimal", ""])
def test_kind_from_name_rejects_unknown_names(name: str) -> None:
    expected = (
        f"unknown field type {name!r} "
        "(expected one of: text, integer, decimal, float, boolean, datetime, date, uuid, json)"
    )
    with pytest.raises(ValueError, match=re.escape(expected)) as caught:
        kind_from_name(name)
    assert str(caught.value) == expected


def test_module_never_imports_dagster() -> None:
    tree = ast.parse(Path(normalize_module.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "dagster" not in imported


def test_fast_decimal128_decode_matches_the_library() -> None:
    """The diff's Decimal128 decoder gives the library's exact digits, specials included."""
    import random

    from recon_pipeline.model.normalize import _decimal128_to_decimal

    rng = random.Random(4)
    samples = ["12.50", "-0.00", "0", "1E+10", "-123456789012345678901234567890.1234", "NaN",
               "Infinity", "-Infinity", "1E-6176", "9999999999999999999999999999999999E6111"]
    samples += [str(Decimal(rng.randint(-10**30, 10**30)).scaleb(rng.randint(-40, 40)))
                for _ in range(2000)]
    for text in samples:
        value = Decimal128(text)
        assert str(_decimal128_to_decimal(value)) == str(value.to_decimal()), text
