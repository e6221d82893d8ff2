"""EventGate: the bounds on what POST /v1/events may cost the server while Kafka is away."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from armlab.entrypoints.api.routes_events import GRACE_S, EventGate
from armlab.errors import ServiceUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _gate(clock: Clock | None = None, **kw: float) -> EventGate:
    args = {"timeout_s": 1.0, "max_waiting": 2, "breaker_s": 5.0, **kw}
    return EventGate(timeout_s=args["timeout_s"], max_waiting=int(args["max_waiting"]),
                     breaker_s=args["breaker_s"], clock=clock or time.monotonic)


def _wait_until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_at_most_max_waiting_publishes_wait_and_one_more_is_refused_at_once() -> None:
    gate = _gate(timeout_s=5.0)
    release = threading.Event()

    async def main() -> None:
        held = [asyncio.create_task(gate.run(release.wait)) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert gate.waiting == 2
        t0 = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="already waiting on Kafka"):
            await gate.run(lambda: None)
        assert time.monotonic() - t0 < 0.1
        release.set()
        await asyncio.gather(*held)
        assert gate.waiting == 0
        await gate.run(lambda: None)  # a full pool is not a Kafka failure: no breaker

    try:
        asyncio.run(main())
    finally:
        release.set()
        gate.close()


def test_a_publish_outlasting_the_bound_answers_503_and_keeps_its_slot() -> None:
    gate = _gate(timeout_s=0.2, breaker_s=0)
    release = threading.Event()

    async def main() -> None:
        t0 = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="within 0.2 s"):
            await gate.run(release.wait)
        assert time.monotonic() - t0 < 0.2 + GRACE_S + 0.3
        assert gate.waiting == 1  # the stuck thread still counts until it returns
        release.set()
        _wait_until(lambda: gate.waiting == 0)

    try:
        asyncio.run(main())
    finally:
        release.set()
        gate.close()


def test_breaker_fails_fast_then_lets_one_trial_through() -> None:
    clock = Clock()
    gate = _gate(clock, breaker_s=5.0)
    calls: list[str] = []

    def down() -> None:
        calls.append("down")
        raise ServiceUnavailable("cannot reach Kafka")

    async def main() -> None:
        with pytest.raises(ServiceUnavailable, match="cannot reach Kafka"):
            await gate.run(down)
        # open: refused without calling Kafka
        for _ in range(3):
            with pytest.raises(ServiceUnavailable, match="resumes in 5.0 s"):
                await gate.run(down)
        assert calls == ["down"]
        clock.now += 5.1
        # half-open: one trial; while it runs, the others are refused
        release = threading.Event()
        trial = asyncio.create_task(gate.run(release.wait))
        await asyncio.sleep(0.05)
        with pytest.raises(ServiceUnavailable, match="trial publish"):
            await gate.run(lambda: calls.append("other"))
        release.set()
        await trial
        await gate.run(lambda: calls.append("ok"))  # the trial succeeded: closed
        assert calls == ["down", "ok"]
        # a failed trial opens the breaker again
        with pytest.raises(ServiceUnavailable):
            await gate.run(down)
        clock.now += 5.1
        with pytest.raises(ServiceUnavailable, match="cannot reach Kafka"):
            await gate.run(down)
        with pytest.raises(ServiceUnavailable, match="resumes in"):
            await gate.run(down)
        assert calls == ["down", "ok", "down", "down"]

    try:
        asyncio.run(main())
    finally:
        gate.close()


def test_kafka_errors_are_503_and_breaker_zero_disables_it() -> None:
    gate = _gate(breaker_s=0)
    calls = []

    def boom() -> None:
        calls.append(1)
        raise RuntimeError("kafka-python said no")

    async def main() -> None:
        for _ in range(3):
            with pytest.raises(ServiceUnavailable, match="RuntimeError: kafka-python said no"):
                await gate.run(boom)
        assert len(calls) == 3

    try:
        asyncio.run(main())
    finally:
        gate.close()
