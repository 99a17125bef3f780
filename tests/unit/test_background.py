"""Read-ahead and write-behind threads: order, bounded queues, errors reach the caller."""

from __future__ import annotations

import threading
import time

import pytest

from changeseg.inference.background import Prefetch, Sink


def test_prefetch_keeps_order_and_stays_a_bounded_number_of_items_ahead():
    produced = []

    def items():
        for i in range(20):
            produced.append(i)
            yield i

    with Prefetch(items(), depth=2) as ahead:
        it = iter(ahead)
        assert next(it) == 0
        time.sleep(0.3)  # the producer fills the queue, then waits
        # one consumed, two queued, one produced and waiting to be queued
        assert len(produced) <= 4
        assert list(it) == list(range(1, 20))


def test_prefetch_raises_the_producers_error_and_stops_on_early_exit():
    def failing():
        yield 1
        raise OSError("block 7 is corrupt")

    with Prefetch(failing()) as ahead, pytest.raises(OSError, match="block 7"):
        list(ahead)

    started = threading.Event()

    def endless():
        started.set()
        i = 0
        while True:
            i += 1
            yield i

    ahead = Prefetch(endless(), depth=1)
    assert next(iter(ahead)) == 1
    ahead.close()  # returns: the thread notices the stop while its queue is full
    assert started.is_set() and not ahead._thread.is_alive()


def test_sink_consumes_everything_in_order_and_raises_its_error():
    seen = []
    with Sink(seen.append, depth=1) as sink:
        for i in range(10):
            sink.put(i)
    assert seen == list(range(10))

    def consume(item):
        if item == 3:
            raise ValueError("disk full")
        seen.append(item)

    seen.clear()
    with pytest.raises(ValueError, match="disk full"):
        with Sink(consume, depth=1) as sink:
            for i in range(10):
                sink.put(i)
                time.sleep(0.01)
    assert seen == [0, 1, 2]
