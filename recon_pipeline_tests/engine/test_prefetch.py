"""Read-ahead keeps order, surfaces errors in the consumer, and stops when closed."""

import threading
from collections.abc import Iterator

import pytest

from recon_pipeline.engine.prefetch import prefetched


def test_yields_every_item_in_order() -> None:
    assert list(prefetched(iter(range(1000)), depth=3)) == list(range(1000))


def test_error_in_the_reader_is_raised_to_the_consumer() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise RuntimeError("server went away")

    items = prefetched(failing())
    assert next(items) == 1
    with pytest.raises(RuntimeError, match="server went away"):
        next(items)


def test_closing_the_consumer_stops_the_reader() -> None:
    produced: list[int] = []

    def endless() -> Iterator[int]:
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1

    items = prefetched(endless(), depth=2)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()
    assert not any(t.name == "recon-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 3 + 2 + 1  # consumed + queue depth + one in flight
