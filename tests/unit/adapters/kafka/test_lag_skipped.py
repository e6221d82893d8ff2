"""KafkaSource.highwaters leaves out the offsets read_committed moves past without a record
(transaction markers, aborted records): a partition whose last write was a committed
transaction shows lag 0 once its records are committed, not 1 for good."""

from __future__ import annotations

from kafka import TopicPartition

from armlab.adapters.kafka.source import KafkaSource
from tests.unit.adapters.kafka.test_align import FB, IMP, FakeConsumer, recs, source


def plain(c: FakeConsumer) -> KafkaSource:
    s = source(c)
    s.align = None
    s._last_end_offsets = float("inf")  # no broker end-offsets call in these tests
    return s


def test_a_trailing_marker_is_not_lag() -> None:
    c = FakeConsumer([{IMP: recs(IMP, 0, [1, 2, 3, 4])}], hw=5)  # offset 4: a commit marker
    s = plain(c)
    assert len(s.poll(100, 0.1)) == 4
    c.pos[IMP] = 5  # kafka-python moved past the marker without a record
    assert s.highwaters([("imp", 0)]) == {("imp", 0): 4}


def test_aborted_records_in_the_middle_are_not_lag_while_behind() -> None:
    c = FakeConsumer([{IMP: recs(IMP, 0, [1, 2])}, {IMP: recs(IMP, 7, [3])}], hw=20)
    s = plain(c)
    s.poll(100, 0.1)
    c.pos[IMP] = 7  # offsets 2-6: an aborted transaction and its marker, skipped
    assert s.highwaters([("imp", 0)]) == {("imp", 0): 15}
    s.poll(100, 0.1)
    assert s.highwaters([("imp", 0)]) == {("imp", 0): 20}  # 8..19 still to read


def test_no_adjustment_while_records_are_held_or_before_any_record() -> None:
    c = FakeConsumer([{FB: recs(FB, 0, [10, 20])}], hw=6)
    s = source(c)  # aligned: feedback newer than any impression is held
    s._last_end_offsets = float("inf")
    assert s.poll(100, 0.1) == []
    c.pos[FB] = 6
    assert s.highwaters([("fb", 0)]) == {("fb", 0): 6}
    fresh = plain(FakeConsumer([], hw=3))
    fresh.consumer.pos[IMP] = 3
    assert fresh.highwaters([("imp", 0)]) == {("imp", 0): 3}


def test_seek_sets_the_reference_point() -> None:
    c = FakeConsumer([], hw=10)
    s = plain(c)
    s.seek(("imp", 0), 9)  # the stored offset: the marker at 9 was not handed out
    c.pos[IMP] = 10
    assert s.highwaters([("imp", 0)]) == {("imp", 0): 9}
    assert c.sought == [(TopicPartition("imp", 0), 9)]
