"""Dynamic batching across requests: gathering, splitting, the queue bound, deadlines, drain."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from serving.batching import Batcher, Closed, DeadlineExceeded, QueueFull


def _model(calls: list[int], delay: float = 0.0):
    def run(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        time.sleep(delay)
        return x.reshape(len(x), -1).sum(axis=1, keepdims=True) * np.ones((1, 2))

    return run


def _images(n: int, value: float) -> np.ndarray:
    return np.full((n, 1, 2, 2), value, np.float32)


def test_concurrent_requests_share_one_call_and_get_their_own_rows() -> None:
    async def go():
        calls: list[int] = []
        b = Batcher(_model(calls), max_batch_size=8, max_queue_delay_us=200_000, max_queue=64)
        b.start()
        outs = await asyncio.gather(*(b.submit(_images(1, v), 5.0) for v in range(8)))
        await b.close()
        return calls, outs

    calls, outs = asyncio.run(go())
    assert calls == [8]  # gathered: one inference call
    for v, out in enumerate(outs):
        np.testing.assert_allclose(out, [[4 * v, 4 * v]])  # each request its own rows


def test_batch_size_one_runs_every_image_alone() -> None:
    async def go():
        calls: list[int] = []
        b = Batcher(_model(calls), max_batch_size=1, max_queue_delay_us=200_000, max_queue=64)
        b.start()
        await asyncio.gather(*(b.submit(_images(1, v), 5.0) for v in range(5)))
        await b.close()
        return calls

    assert asyncio.run(go()) == [1] * 5


def test_a_batch_never_exceeds_its_size_and_big_requests_go_alone() -> None:
    async def go():
        calls: list[int] = []
        b = Batcher(_model(calls), max_batch_size=4, max_queue_delay_us=100_000, max_queue=64)
        b.start()
        sizes = [3, 3, 6, 1]
        outs = await asyncio.gather(*(b.submit(_images(n, 1), 5.0) for n in sizes))
        await b.close()
        return calls, [len(o) for o in outs]

    calls, lengths = asyncio.run(go())
    assert lengths == [3, 3, 6, 1] and sum(calls) == 13
    assert all(c <= 4 for c in calls if c != 6) and 6 in calls


def test_full_queue_is_refused_at_once_and_deadlines_drop_waiting_work() -> None:
    async def go():
        calls: list[int] = []
        b = Batcher(_model(calls, delay=0.3), max_batch_size=1, max_queue_delay_us=0, max_queue=2)
        b.start()
        first = asyncio.ensure_future(b.submit(_images(1, 1), 5.0))
        await asyncio.sleep(0.05)  # the first is running; the queue is empty again
        late = asyncio.ensure_future(b.submit(_images(1, 2), 0.1))  # waits past its deadline
        ok = asyncio.ensure_future(b.submit(_images(1, 3), 5.0))
        await asyncio.sleep(0)  # both are queued now: the queue is full
        with pytest.raises(QueueFull):
            await b.submit(_images(1, 4), 5.0)
        results = await asyncio.gather(first, late, ok, return_exceptions=True)
        await b.close()
        return calls, results

    calls, results = asyncio.run(go())
    assert isinstance(results[1], DeadlineExceeded)
    assert not isinstance(results[0], Exception) and not isinstance(results[2], Exception)
    assert calls == [1, 1]  # the expired request never reached the model


def test_close_drains_queued_work_then_refuses_new() -> None:
    async def go():
        calls: list[int] = []
        b = Batcher(_model(calls, delay=0.05), max_batch_size=2, max_queue_delay_us=0, max_queue=64)
        b.start()
        pending = [asyncio.ensure_future(b.submit(_images(1, v), 5.0)) for v in range(6)]
        await asyncio.sleep(0)
        await b.close()
        done = await asyncio.gather(*pending)
        with pytest.raises(Closed):
            await b.submit(_images(1, 0), 5.0)
        return calls, done

    calls, done = asyncio.run(go())
    assert sum(calls) == 6 and len(done) == 6


def test_a_failing_model_fails_every_request_of_its_batch() -> None:
    def broken(x):
        raise RuntimeError("runtime fault")

    async def go():
        b = Batcher(broken, max_batch_size=4, max_queue_delay_us=50_000, max_queue=8)
        b.start()
        res = await asyncio.gather(
            *(b.submit(_images(1, 0), 5.0) for _ in range(3)), return_exceptions=True
        )
        await b.close()
        return res

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(go()))


def test_shapes_never_mix_and_the_worker_outlives_a_failure() -> None:
    calls: list[tuple] = []

    def run(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape)
        if x.shape[-1] == 3:
            raise RuntimeError("this shape breaks the model")
        return np.zeros((len(x), 2))

    async def go():
        b = Batcher(run, max_batch_size=8, max_queue_delay_us=100_000, max_queue=64)
        b.start()
        small = np.zeros((1, 1, 2, 2), np.float32)
        odd = np.zeros((1, 1, 3, 3), np.float32)
        res = await asyncio.gather(
            b.submit(small, 5.0),
            b.submit(odd, 5.0),
            b.submit(small, 5.0),
            return_exceptions=True,
        )
        after = await b.submit(small, 5.0)  # the worker is still there
        await b.close()
        return res, after

    res, after = asyncio.run(go())
    # Mixed into one call, the concatenation would have failed all three requests.
    assert isinstance(res[1], RuntimeError) and "breaks" in str(res[1])
    assert res[0].shape == (1, 2) and res[2].shape == (1, 2) and after.shape == (1, 2)
    assert (1, 1, 3, 3) in calls
