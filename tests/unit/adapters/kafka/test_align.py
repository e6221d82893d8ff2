"""KafkaSource's impression/feedback alignment: feedback newer than the impressions read so
far is held back (never dropped, never reordered within a partition) and released once the
impressions are read, on an empty poll, or after MAX_HOLD_S; seek() drops held records."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

from kafka import TopicPartition

from armlab.adapters.kafka.source import KafkaSource

Rec = namedtuple("Rec", "topic partition offset timestamp key value")
IMP, FB = TopicPartition("imp", 0), TopicPartition("fb", 0)


class FakeConsumer:
    def __init__(self, polls: list[dict[Any, list[Rec]]], hw: int) -> None:
        self.polls = polls
        self.hw = hw
        self.pos = {IMP: 0, FB: 0}
        self.sought: list[tuple[Any, int]] = []

    def poll(self, timeout_ms: int, max_records: int) -> dict[Any, list[Rec]]:
        out = self.polls.pop(0) if self.polls else {}
        for tp, recs in out.items():
            self.pos[tp] = recs[-1].offset + 1
        return out

    def highwater(self, tp: Any) -> int:
        return self.hw

    def position(self, tp: Any, timeout_ms: int = 0) -> int:
        return self.pos[tp]

    def assignment(self) -> set[Any]:
        return {IMP, FB}

    def seek(self, tp: Any, off: int) -> None:
        self.sought.append((tp, off))


def recs(tp: TopicPartition, start: int, ts: list[int]) -> list[Rec]:
    return [Rec(tp.topic, tp.partition, start + i, t, b"k", b"v") for i, t in enumerate(ts)]


def source(consumer: FakeConsumer) -> KafkaSource:
    s = KafkaSource.__new__(KafkaSource)
    s.consumer = consumer
    s.align = ("imp", "fb")
    s._imp_ts = {}
    s._held = {}
    s._handed = {}
    s._listener = None  # not subscribed: the assignment watchdog stays out of the way
    return s


def offsets(batch: list[Rec], topic: str) -> list[int]:
    return [r.offset for r in batch if r.topic == topic]


def test_feedback_ahead_of_impressions_is_held_then_released_in_order() -> None:
    c = FakeConsumer([
        {FB: recs(FB, 0, [10, 20, 30, 40])},          # feedback first: nothing read yet
        {IMP: recs(IMP, 0, [10, 20])},                # impressions up to ts 20
        {IMP: recs(IMP, 2, [30, 40]), FB: recs(FB, 4, [50])},
    ], hw=4)
    s = source(c)
    assert s.poll(100, 0.1) == []                       # all four held
    b2 = s.poll(100, 0.1)
    assert offsets(b2, "imp") == [0, 1] and offsets(b2, "fb") == [0, 1]
    b3 = s.poll(100, 0.1)                               # impressions caught up: release all
    assert offsets(b3, "imp") == [2, 3] and offsets(b3, "fb") == [2, 3, 4]


def test_empty_poll_releases_and_seek_drops_held() -> None:
    c = FakeConsumer([{FB: recs(FB, 0, [10, 20])}], hw=5)
    s = source(c)
    assert s.poll(100, 0.1) == []
    assert offsets(s.poll(100, 0.1), "fb") == [0, 1]   # nothing new arrived: hand them out
    c.polls = [{FB: recs(FB, 2, [30])}]
    assert s.poll(100, 0.1) == []
    s.seek(("fb", 0), 2)                               # the runner re-reads from offset 2
    assert s._held == {} and c.sought == [(FB, 2)]


def test_hold_expires(monkeypatch: Any) -> None:
    import armlab.adapters.kafka.source as ks

    clock = [100.0]
    monkeypatch.setattr(ks.time, "monotonic", lambda: clock[0])
    c = FakeConsumer([{FB: recs(FB, 0, [10])}, {IMP: recs(IMP, 0, [1])}], hw=9)
    s = source(c)
    assert s.poll(100, 0.1) == []
    clock[0] += KafkaSource.MAX_HOLD_S + 0.1
    assert offsets(s.poll(100, 0.1), "fb") == [0]


class StuckConsumer:
    """A kafka-python consumer that never gets partitions (the coordinator wedge)."""

    built: list[StuckConsumer] = []

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.subscribed: list[Any] = []
        self.closed = False
        self.assigned: set[Any] = set()
        StuckConsumer.built.append(self)

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.subscribed.append((topics, listener))

    def assignment(self) -> set[Any]:
        return self.assigned

    def close(self, autocommit: bool = True) -> None:
        self.closed = True


def test_a_consumer_that_never_gets_partitions_is_rebuilt(monkeypatch: Any) -> None:
    from armlab.adapters.kafka import source as source_mod
    from armlab.settings import KafkaSettings

    StuckConsumer.built = []
    monkeypatch.setattr(source_mod, "KafkaConsumer", StuckConsumer)
    s = KafkaSource(KafkaSettings(bootstrap="127.0.0.1:1"), ["imp", "fb"], "g",
                    rejoin_after_s=60)
    s.start(lambda tps: None, lambda tps: None)
    t0 = s._unassigned_since
    assert t0 is not None
    s._watch_assignment(now=t0 + 30)
    assert len(StuckConsumer.built) == 1 and s.rejoins == 0   # still within the grace period
    s._watch_assignment(now=t0 + 61)
    first, second = StuckConsumer.built
    assert first.closed and s.consumer is second and s.rejoins == 1
    assert second.config == first.config and second.config["group_id"] == "g"
    assert second.subscribed == [(["imp", "fb"], first.subscribed[0][1])]  # same listener
    second.assigned = {IMP}                                   # joined: the clock resets
    s._watch_assignment(now=t0 + 200)
    assert s._unassigned_since is None and len(StuckConsumer.built) == 2


class _Coordinator:
    def __init__(self, stable: bool) -> None:
        self.stable = stable

    def generation_if_stable(self) -> object | None:
        return object() if self.stable else None


def test_a_member_without_partitions_is_not_rebuilt(monkeypatch: Any) -> None:
    """More consumers than partitions: a joined member may hold nothing; rebuilding it would
    rebalance the whole group every minute."""
    from armlab.adapters.kafka import source as source_mod
    from armlab.settings import KafkaSettings

    StuckConsumer.built = []
    monkeypatch.setattr(source_mod, "KafkaConsumer", StuckConsumer)
    s = KafkaSource(KafkaSettings(bootstrap="127.0.0.1:1"), ["imp"], "g", rejoin_after_s=60)
    s.start(lambda tps: None, lambda tps: None)
    s.consumer._coordinator = _Coordinator(stable=True)  # type: ignore[attr-defined]
    t0 = s._unassigned_since
    assert t0 is not None
    s._watch_assignment(now=t0 + 600)
    assert len(StuckConsumer.built) == 1 and s.rejoins == 0
    s.consumer._coordinator.stable = False  # type: ignore[attr-defined]  # fell out of the group
    s._watch_assignment(now=t0 + 601)
    s._watch_assignment(now=t0 + 662)
    assert len(StuckConsumer.built) == 2 and s.rejoins == 1


class UnreachableConsumer(FakeConsumer):
    """poll() raises what kafka-python 3.0 raises while the broker restarts."""

    def __init__(self, failures: int, then: list[dict[Any, list[Rec]]]) -> None:
        super().__init__(then, hw=0)
        self.failures = failures

    def poll(self, timeout_ms: int, max_records: int) -> dict[Any, list[Rec]]:
        from kafka.errors import KafkaConnectionError

        if self.failures:
            self.failures -= 1
            raise KafkaConnectionError("111 ECONNREFUSED")
        return super().poll(timeout_ms, max_records)


def test_poll_rides_out_a_broker_outage() -> None:
    """A connection error out of poll is an empty poll, not a dead consumer; the records
    come once the broker is back."""
    c = UnreachableConsumer(3, [{IMP: recs(IMP, 0, [1, 2])}])
    s = source(c)
    s.align = None
    s.poll_errors, s._last_poll_warning = 0, 0.0
    assert [s.poll(10, 0.01) for _ in range(3)] == [[], [], []]
    assert s.poll_errors == 3
    assert [r.offset for r in s.poll(10, 0.01)] == [0, 1]


def test_poll_raises_what_waiting_cannot_fix() -> None:
    """A non-retriable error (an authentication failure) stops the consumer, plainly."""
    import pytest
    from kafka.errors import KafkaError

    class AuthFailed(KafkaError):
        retriable = False

    class Refusing(FakeConsumer):
        def poll(self, timeout_ms: int, max_records: int) -> dict[Any, list[Rec]]:
            raise AuthFailed("SASL authentication failed")

    s = source(Refusing([], hw=0))
    s.align = None
    s.poll_errors, s._last_poll_warning = 0, 0.0
    with pytest.raises(AuthFailed):
        s.poll(10, 0.01)
    assert s.poll_errors == 0


def test_a_rebuild_while_the_broker_is_down_keeps_the_old_client(monkeypatch: Any) -> None:
    from armlab.adapters.kafka import source as source_mod
    from armlab.settings import KafkaSettings

    StuckConsumer.built = []
    monkeypatch.setattr(source_mod, "KafkaConsumer", StuckConsumer)
    s = KafkaSource(KafkaSettings(bootstrap="127.0.0.1:1"), ["imp"], "g", rejoin_after_s=60)
    s.start(lambda tps: None, lambda tps: None)
    old = s.consumer
    t0 = s._unassigned_since
    assert t0 is not None

    def refuse(**config: Any) -> Any:
        from kafka.errors import KafkaConnectionError

        raise KafkaConnectionError("no brokers")

    monkeypatch.setattr(source_mod, "KafkaConsumer", refuse)
    s._watch_assignment(now=t0 + 61)
    assert s.consumer is old and not old.closed and s.rejoins == 0
    monkeypatch.setattr(source_mod, "KafkaConsumer", StuckConsumer)
    s._watch_assignment(now=t0 + 61 + 31)          # tried again after half the grace period
    assert s.consumer is not old and old.closed and s.rejoins == 1
