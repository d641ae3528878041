"""The full scan's shortcuts (SPEC 6 Comparison, SPEC 10 engine CPU): `quick_equal` never
calls equal what `values_equal` calls different, and `merge_order` places keys exactly as
`order_key` does."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from decimal import Decimal
from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.objectid import ObjectId

from recon_pipeline.model.normalize import (
    MISSING,
    ValueKind,
    merge_order,
    order_key,
    quick_equal,
    values_equal,
)
from recon_pipeline_tests.model.test_normalize import EQUAL, MUTATED

K = ValueKind
STAMP = dt.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


def _driver(value: object) -> object:
    """`value` as pymongo reads it back (Decimal128, datetimes to the ms, bson's utc)."""
    return bson.decode(bson.encode({"v": value}),
                       bson.CodecOptions(tz_aware=True))["v"]


DRIVER_PAIRS = [
    (K.DECIMAL, Decimal("10.50"), Decimal128("10.50")),
    (K.DECIMAL, Decimal("10.50"), Decimal128("10.5")),
    (K.DECIMAL, Decimal("-10.50"), Decimal128("-10.50")),
    (K.DECIMAL, Decimal("-0.00"), Decimal128("0")),
    (K.DECIMAL, Decimal("0"), Decimal128("-0E+3")),
    (K.DECIMAL, Decimal("10.50"), Decimal128("10.51")),
    (K.DECIMAL, Decimal("10.50"), Decimal128("-10.50")),
    (K.DECIMAL, Decimal("1E+6000"), Decimal128("1E+6000")),
    (K.DECIMAL, Decimal("9" * 34), Decimal128("9" * 34)),
    (K.DECIMAL, Decimal("NaN"), Decimal128("NaN")),
    (K.DECIMAL, Decimal("sNaN"), Decimal128("NaN")),
    (K.DECIMAL, Decimal("Infinity"), Decimal128("Infinity")),
    (K.DECIMAL, Decimal("Infinity"), Decimal128("-Infinity")),
    (K.DECIMAL, Decimal("1"), 1.0),
    (K.DECIMAL, None, MISSING),
    (K.DECIMAL, None, Decimal128("0")),
    (K.DATETIME, STAMP, _driver(STAMP)),
    (K.DATETIME, STAMP + dt.timedelta(microseconds=543), _driver(STAMP)),
    (K.DATETIME, STAMP + dt.timedelta(microseconds=544), _driver(STAMP)),
    (K.DATETIME, STAMP - dt.timedelta(microseconds=457), _driver(STAMP)),
    (K.DATETIME, STAMP.astimezone(dt.timezone(dt.timedelta(hours=-5))), _driver(STAMP)),
    (K.DATETIME, STAMP.replace(tzinfo=None), _driver(STAMP)),
    (K.DATETIME, STAMP, _driver(STAMP).replace(tzinfo=None)),
    (K.DATETIME, STAMP, STAMP.replace(microsecond=123001)),
    (K.DATETIME, None, None),
    (K.TEXT, "a", "a"),
    (K.TEXT, "a", "b"),
    (K.TEXT, None, ""),
    (K.INTEGER, 5, Int64(5)),
    (K.INTEGER, 5, 5),
    (K.INTEGER, 1, True),
    (K.BOOLEAN, True, 1),
]


@pytest.mark.parametrize(("kind", "source", "target", "tolerance"),
                         [*EQUAL, *MUTATED,
                          *(pytest.param(k, s, t, Decimal(0), id=f"driver-{n}")
                            for n, (k, s, t) in enumerate(DRIVER_PAIRS)),
                          *(pytest.param(k, s, t, Decimal("0.005"), id=f"driver-tol-{n}")
                            for n, (k, s, t) in enumerate(DRIVER_PAIRS))])
def test_quick_equal_never_contradicts_values_equal(kind: ValueKind, source: object,
                                                    target: object,
                                                    tolerance: Decimal) -> None:
    if quick_equal(kind)(source, target):
        assert values_equal(source, target, kind, tolerance) is True


@pytest.mark.parametrize(("kind", "source", "target"), [
    (K.DECIMAL, Decimal("10.50"), Decimal128("10.50")),
    (K.DECIMAL, Decimal("10.50"), Decimal128("10.5")),
    (K.DECIMAL, None, None),
    (K.DATETIME, STAMP, _driver(STAMP)),
    (K.DATETIME, STAMP + dt.timedelta(microseconds=543), _driver(STAMP)),
    (K.TEXT, "a", "a"),
    (K.INTEGER, 7, 7),
    (K.TEXT, None, MISSING),
])
def test_quick_equal_settles_what_the_drivers_deliver_for_rows_that_agree(
        kind: ValueKind, source: object, target: object) -> None:
    assert quick_equal(kind)(source, target) is True


KEYS: list[Any] = [None, -3, 0, 2, 2.5, 2.0, Int64(2), Int64(2**40), Decimal128("7.5"),
                   Decimal128("2"), "", "A", "a", "é", "éa", str(uuid.UUID(int=5)),
                   uuid.UUID(int=5), uuid.UUID(int=7), Binary(b"ab", 0), Binary(b"ab", 5),
                   ObjectId("0123456789abcdef01234567"), False, True,
                   dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]


def _sign(left: Any, right: Any) -> int:
    return (left > right) - (left < right)


@pytest.mark.parametrize("kind", [K.INTEGER, K.TEXT, K.UUID])
def test_merge_order_compares_as_order_key(kind: ValueKind) -> None:
    for left, right in itertools.product(KEYS, repeat=2):
        expected = _sign(order_key(left), order_key(right))
        placed_left, placed_right = merge_order(left, kind), merge_order(right, kind)
        assert _sign(placed_left, placed_right) == expected, (left, right)
        assert (placed_left == placed_right) is (expected == 0), (left, right)
        # as parts of an embedded merge key (parent, key)
        pair_order = _sign(order_key((left, right)), order_key((right, left)))
        assert _sign((placed_left, placed_right),
                     (placed_right, placed_left)) == pair_order, (left, right)
    assert (sorted(KEYS, key=lambda k: merge_order(k, kind))
            == sorted(KEYS, key=order_key))
