"""The CPU batch prefetch: same batches in the same order, made ahead on an idle-priority thread, errors surfaced."""
import os
import threading
import time

import pytest

from pneumo_hpc.classify.prefetch import Prefetch, idle_priority_available

pytestmark = pytest.mark.skipif(not idle_priority_available(), reason="SCHED_IDLE is Linux-only")


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("pneumo-prefetch")]


def test_batches_arrive_in_order_made_ahead_on_an_idle_priority_thread():
    made = {}
    caller = threading.get_ident()

    def make(step):
        made[step] = (threading.get_ident(), os.sched_getscheduler(0))
        return step * step

    seen = []
    with Prefetch(make, range(5)) as batches:
        for value in batches:
            seen.append(value)
            step = len(seen) - 1
            if step < 4:
                # the caller idles: the next batch gets made without being asked for
                for _ in range(1000):
                    if step + 1 in made:
                        break
                    time.sleep(0.01)
                assert step + 1 in made, f"batch {step + 1} was not prepared while the caller idled"
    assert seen == [0, 1, 4, 9, 16]
    assert all(tid != caller and policy == os.SCHED_IDLE for tid, policy in made.values()), made
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the caller keeps its own priority
    assert not prefetch_threads()


def test_an_error_in_a_batch_surfaces_at_that_step():
    def make(step):
        if step == 2:
            raise ValueError(f"bad batch {step}")
        return step

    seen = []
    with pytest.raises(ValueError, match="bad batch 2"):
        with Prefetch(make, range(4)) as batches:
            for value in batches:
                seen.append(value)
    assert seen == [0, 1]
    assert not prefetch_threads()


def test_leaving_early_stops_the_worker():
    with Prefetch(lambda step: step, range(100)) as batches:
        for value in batches:
            if value == 3:
                break
    assert not prefetch_threads()


def test_disabled_makes_batches_in_the_callers_thread():
    caller = threading.get_ident()
    threads = []
    with Prefetch(lambda step: threads.append(threading.get_ident()) or step, range(3), enabled=False) as batches:
        assert list(batches) == [0, 1, 2]
    assert threads == [caller] * 3
