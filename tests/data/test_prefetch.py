"""The producer thread: order, the end, errors surfacing in the consumer, stopping early."""

import threading
import time

import pytest

from elmojax.data.prefetch import Prefetcher
from elmojax.errors import ElmoError


def counter(limit=None, fail_at=None):
    n = 0

    def produce():
        nonlocal n
        if fail_at is not None and n == fail_at:
            raise ElmoError("shard.txt: not valid UTF-8 (invalid start byte at byte 3)")
        if limit is not None and n == limit:
            raise StopIteration
        n += 1
        return n

    return produce


def test_items_in_order_then_the_end():
    with Prefetcher(counter(limit=7), depth=2) as p:
        assert list(p) == [1, 2, 3, 4, 5, 6, 7]
        with pytest.raises(StopIteration):
            next(p)


def test_producer_error_is_raised_in_the_consumer_after_the_good_items():
    with Prefetcher(counter(fail_at=3), depth=5) as p:
        assert [next(p) for _ in range(3)] == [1, 2, 3]
        with pytest.raises(ElmoError, match=r"shard.txt: not valid UTF-8 \(invalid start byte at byte 3\)"):
            next(p)


def test_close_stops_a_producer_blocked_on_a_full_queue():
    produced = []

    def produce():
        produced.append(len(produced))
        return produced[-1]

    p = Prefetcher(produce, depth=2)
    assert next(p) == 0
    time.sleep(0.3)  # the producer fills the queue and blocks
    assert len(produced) <= 4  # bounded read-ahead: queue of 2, one in hand, one consumed
    p.close()
    assert not any(t.name == "elmojax-prefetch" for t in threading.enumerate())
    with pytest.raises(StopIteration):
        next(p)
