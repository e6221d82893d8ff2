"""Ingestion under failure, on a real Kafka broker and a real PostgreSQL server.

Every test compares the final per-arm statistics with ``==`` against statistics computed
directly from the produced events (armlab.tools.synth.expected_stats shares no code with
the consumer; propensities are powers of two so float sums are exact in any order).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from armlab.adapters.db import consumer_store as consumer_store
from armlab.adapters.db import queries
from armlab.adapters.db.consumer_batches import SqlIngestStore
from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.db.models import Arm, ConsumerOffset, Experiment, Impression
from armlab.tools.synth import SynthEvent, expected_stats, synthetic_events

pytestmark = pytest.mark.reliability

ARMS = ("control", "b", "c")
#: A served_at / occurred_at inside the consumers' default retention (ARMLAB_RETENTION_DAYS).
RECENT = (datetime.now(UTC) - timedelta(days=2)).replace(microsecond=0).isoformat()
# A guardrail metric on every harness experiment: its sums are checked like arm_stats.
GUARDRAILS = [{"key": "skips", "source": {"feedback": "skip"}, "aggregate": "any",
               "harm": "increase", "margin": {"absolute": 0.0}, "alpha": 0.05}]


@dataclass
class Harness:
    pg_url: str
    bootstrap: str
    topic_imp: str
    topic_fb: str
    topic_dlq: str
    group: str = field(default_factory=lambda: f"g-{uuid.uuid4().hex[:6]}")
    exp_key: str = field(default_factory=lambda: f"exp-{uuid.uuid4().hex[:6]}")
    exp_id: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # Consumer output goes to files, never to unread pipes: a full pipe (64 KiB of warnings
    # during a broker restart) would block the consumer and look like a stall.
    logs: dict[int, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.engine = make_engine(self.pg_url, pool_size=2)
        self.sf = make_session_factory(self.engine)
        with self.sf() as s, s.begin():
            e = Experiment(key=self.exp_key, name="rel", control_arm_key=ARMS[0], salt="s",
                           status="running", reward_kind="binary", reward_metric="click",
                           attribution_window_s=3600, guardrails=GUARDRAILS)
            e.arms = [Arm(key=a, is_control=i == 0, position=i) for i, a in enumerate(ARMS)]
            s.add(e)
            s.flush()
            self.exp_id = e.id

    # -- producing -----------------------------------------------------------------------
    def produce(self, events: Iterable[SynthEvent], *, twice: bool = False,
                raw: Iterable[tuple[str, bytes | None]] = ()) -> None:
        from kafka import KafkaProducer

        p = KafkaProducer(bootstrap_servers=[self.bootstrap], acks="all",
                          enable_idempotence=True, linger_ms=20, batch_size=1 << 20)
        for ev in events:
            topic = self.topic_imp if ev.kind == "impression" else self.topic_fb
            for _ in range(2 if twice else 1):
                p.send(topic, key=ev.key, value=ev.value)
                self.records += 1
            self.sent.append(ev.fields)
        for topic, value in raw:
            p.send(topic, key=b"junk", value=value)
            self.records += 1
        p.flush()
        p.close()

    def events(self, n: int, seed: int, **kw: Any) -> list[SynthEvent]:
        return list(synthetic_events(n, experiment_key=self.exp_key, arms=ARMS, seed=seed,
                                     id_prefix=f"{self.exp_key}-{seed}-", **kw))

    # -- consumers -----------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return dict(os.environ, ARMLAB_DATABASE_URL=self.pg_url,
                    ARMLAB_KAFKA_BOOTSTRAP=self.bootstrap, ARMLAB_TRANSPORT="kafka",
                    ARMLAB_TOPIC_IMPRESSIONS=self.topic_imp, ARMLAB_TOPIC_FEEDBACK=self.topic_fb,
                    ARMLAB_TOPIC_DLQ=self.topic_dlq, ARMLAB_CONSUMER_GROUP=self.group,
                    ARMLAB_LOG_LEVEL="WARNING")

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "armlab", "consume", "--batch", "1000", *args]
        log_path = Path(tempfile.mkdtemp(prefix="armlab-consumer-")) / "consumer.log"
        with open(log_path, "wb") as out:
            p = subprocess.Popen(cmd, env=self.env(), stdout=out, stderr=subprocess.STDOUT)
        self.logs[p.pid] = log_path
        self.procs.append(p)
        return p

    def log_tail(self, p: subprocess.Popen[bytes], n: int = 3000) -> str:
        path = self.logs.get(p.pid)
        if path is None or not path.exists():
            return ""
        return path.read_bytes()[-n:].decode(errors="replace")

    def committed(self) -> int:
        """Records committed so far: sum of stored next offsets (all partitions)."""
        try:
            with self.sf() as s:
                v = s.scalar(select(func.coalesce(func.sum(ConsumerOffset.next_offset), 0))
                             .where(ConsumerOffset.group_id == self.group))
            return int(v or 0)
        except Exception:  # noqa: BLE001 - the database may be restarting
            return -1

    def wait_reporting(self, p: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
        """Wait until consumer process ``p`` has written a lag report (its loop runs)."""
        from armlab.adapters.db.models import ConsumerLag

        deadline = time.monotonic() + timeout
        while True:
            with self.sf() as s:
                seen = s.scalar(select(func.count()).select_from(ConsumerLag).where(
                    ConsumerLag.group_id == self.group,
                    ConsumerLag.consumer.like(f"%:{p.pid}")))
            if seen:
                return
            if p.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"consumer pid {p.pid} never reported: {self.log_tail(p)}")
            time.sleep(0.2)

    def wait_committed(self, target: int, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while self.committed() < target:
            for p in self.procs:
                if p.poll() not in (None, 0, -signal.SIGKILL):
                    pytest.fail(f"consumer died rc={p.returncode}: "
                                f"{self.log_tail(p)}")
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- consumer pid {p.pid}:\n{self.log_tail(p)}"
                                  for p in self.procs)
                pytest.fail(f"timeout: committed {self.committed()} of {target}\n{tails}")
            time.sleep(0.1)

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                pytest.fail(f"consumer did not exit on SIGTERM\n{self.log_tail(p)}")
            assert p.returncode in (0, -signal.SIGKILL), self.log_tail(p)
        self.procs.clear()

    # -- checks --------------------------------------------------------------------------
    def stats(self) -> dict[str, dict[str, float]]:
        with self.sf() as s:
            return {arm: v.as_dict() for (_, arm), v in queries.arm_totals(s, self.exp_id).items()}

    def counters(self) -> dict[str, int]:
        with self.sf() as s:
            return consumer_store.read_counters(s, self.group)

    def guardrail_stats(self) -> dict[str, dict[str, float]]:
        with self.sf() as s:
            got = queries.guardrail_sums(s, self.exp_id).get("skips", {})
        return {arm: v.as_dict() for arm, v in got.items()}

    def assert_exact(self) -> None:
        assert self.stats() == expected_stats(self.sent, window_s=3600)
        # the guardrail metric, written in the same transactions: exactly once as well
        assert self.guardrail_stats() == expected_stats(self.sent, metric="skip",
                                                        window_s=3600)

    def dlq(self, expect: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        from kafka import KafkaConsumer

        c = KafkaConsumer(self.topic_dlq, bootstrap_servers=[self.bootstrap],
                          auto_offset_reset="earliest", enable_auto_commit=False,
                          group_id=None, consumer_timeout_ms=3000)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(out) < expect and time.monotonic() < deadline:
            for r in c:
                out.append(orjson.loads(r.value))
        c.close()
        return out

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.engine.dispose()


@pytest.fixture()
def harness(pg_url: str, kafka_bootstrap: str,
            kafka_topic_factory: Callable[..., str]) -> Callable[..., Harness]:
    made: list[Harness] = []

    def make(partitions: int = 2) -> Harness:
        h = Harness(pg_url, kafka_bootstrap, kafka_topic_factory(partitions, "imp"),
                    kafka_topic_factory(partitions, "fb"), kafka_topic_factory(1, "dlq"))
        made.append(h)
        return h

    yield make  # type: ignore[misc]
    for h in made:
        h.close()


def test_sigkill_five_times_during_100k_events(harness: Callable[..., Harness]) -> None:
    h = harness(2)
    h.produce(h.events(100_000, seed=1))
    rng = random.Random(7)
    marks = sorted(rng.sample(range(5_000, 95_000), 5))
    kills = 0
    for mark in marks:
        p = h.start()
        h.wait_committed(mark)
        time.sleep(rng.uniform(0.0, 0.5))  # kill mid-batch, at a random point
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
        h.procs.remove(p)
    assert kills == 5
    h.start()
    h.wait_committed(h.records)
    h.stop_all()
    h.assert_exact()
    c = h.counters()
    assert c["impression"] == sum(1 for e in h.sent if e["schema"] == "impression.v1")
    assert c.get("duplicate", 0) == 0


def test_postgres_and_kafka_restarts_during_ingestion(
    harness: Callable[..., Harness], pg_server: Any, kafka: Any
) -> None:
    h = harness(2)
    h.produce(h.events(12_000, seed=2))
    h.start()
    h.wait_committed(3_000)
    pg_server.restart()
    h.wait_committed(6_000)
    kafka.restart()
    h.produce(h.events(4_000, seed=3))  # the broker is back: more arrives
    h.wait_committed(h.records)
    h.stop_all()  # SIGTERM: exit 0 after the in-flight batch
    h.assert_exact()


def test_every_event_twice_is_counted_once(harness: Callable[..., Harness]) -> None:
    """Every event twice, and the consumer SIGKILLed half-way and restarted: the primary
    reward's and the guardrail metric's (``skip`` feedback) sums are both exact."""
    h = harness(2)
    h.produce(h.events(10_000, seed=4, kinds=("click", "skip")), twice=True)
    p = h.start()
    h.wait_committed(h.records // 2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    h.procs.remove(p)
    h.start()
    h.wait_committed(h.records)
    h.stop_all()
    h.assert_exact()
    assert h.counters()["duplicate"] == 10_000
    assert any(v["reward_sum"] > 0 for v in h.guardrail_stats().values())


def _malformed(topic_imp: str, topic_fb: str, n: int) -> list[tuple[str, bytes | None]]:
    good_imp = {"schema": "impression.v1", "event_id": "x", "impression_id": "y",
                "experiment_key": "nope", "arm_key": "a", "unit_id": "u", "propensity": 0.5,
                "served_at": RECENT}
    good_fb = {"schema": "feedback.v1", "event_id": "x", "impression_id": "y",
               "experiment_key": "nope", "kind": "click", "value": 1.0,
               "occurred_at": RECENT}
    variants: list[Callable[[int], tuple[str, bytes | None]]] = [
        lambda i: (topic_imp, f"not json {i}".encode()),
        lambda i: (topic_imp, b"\xff\xfe" + str(i).encode()),
        lambda i: (topic_imp, b"{" * (70_000 + i)),
        lambda i: (topic_imp, orjson.dumps({**good_imp, "propensity": -0.5, "event_id": f"x{i}"})),
        lambda i: (topic_imp, orjson.dumps({**good_imp, "propensity": f"{i}"})),
        lambda i: (topic_imp, orjson.dumps({k: v for k, v in good_imp.items()
                                            if k != "unit_id"} | {"n": i})),
        lambda i: (topic_imp, orjson.dumps({**good_imp, "schema": f"impression.v{i + 2}"})),
        lambda i: (topic_imp, orjson.dumps({**good_imp, "event_id": f"n{i}"})
                   .replace(b'"propensity":0.5', b'"propensity":NaN')),
        lambda i: (topic_fb, orjson.dumps({**good_fb, "event_id": f"n{i}"})
                   .replace(b'"value":1.0', b'"value":Infinity')),
        lambda i: (topic_fb, orjson.dumps({**good_fb, "kind": f"k{i}"})),
        lambda i: (topic_fb, orjson.dumps({**good_fb, "occurred_at": i})),
        lambda i: (topic_fb, orjson.dumps([i])),
        lambda i: (topic_fb, None),
    ]
    return [variants[i % len(variants)](i) for i in range(n)]


def test_malformed_corpus_goes_to_dlq_and_good_records_count(
    harness: Callable[..., Harness],
) -> None:
    h = harness(2)
    good = h.events(4_000, seed=5)
    bad = _malformed(h.topic_imp, h.topic_fb, 1_300)
    # interleave: good, bad, good, bad...
    h.produce(good[:2_000], raw=bad[:650])
    h.produce(good[2_000:], raw=bad[650:])
    h.start()
    h.wait_committed(h.records)
    h.stop_all()
    h.assert_exact()
    dlq = h.dlq(expect=len(bad))
    assert len({(d["topic"], d["partition"], d["offset"]) for d in dlq}) == len(bad)
    reasons = {d["reason"] for d in dlq}
    assert {"not_json", "bad_utf8", "too_large", "bad_propensity", "wrong_type",
            "missing_field", "unknown_schema", "non_finite", "unknown_kind",
            "bad_timestamp", "not_object", "empty"} <= reasons
    assert all(d["detail"] for d in dlq)
    counters = h.counters()
    assert sum(counters.get(r, 0) for r in reasons) == len(bad)


def test_two_consumers_in_one_group_same_totals(harness: Callable[..., Harness]) -> None:
    h = harness(4)
    h.produce(h.events(20_000, seed=6))
    h.start()
    h.start()
    h.wait_committed(h.records)
    h.stop_all()
    h.assert_exact()
    with h.sf() as s:
        parts = s.execute(select(ConsumerOffset.partition)
                          .where(ConsumerOffset.group_id == h.group)).all()
    assert len(parts) == 8  # 4 partitions x 2 topics, each committed


# -- poison records: nothing a producer sends can stop the consumer -----------------------------
def _imp(h: Harness, i: int, **changes: Any) -> dict[str, Any]:
    return {"schema": "impression.v1", "event_id": f"p{i}e", "impression_id": f"p{i}i",
            "experiment_key": h.exp_key, "arm_key": "b", "unit_id": f"p{i}u",
            "propensity": 0.5, "served_at": RECENT, **changes}


def _poison(h: Harness) -> list[tuple[str, bytes | None, str]]:
    """(topic, raw, expected reason): each of these stopped `armlab consume` for good."""
    big = 123456789012345678901234567890
    return [
        (h.topic_imp, orjson.dumps(_imp(h, 1, propensity=1e-300)), "bad_propensity"),
        (h.topic_imp, orjson.dumps(_imp(h, 2, propensity=1e-160)), "bad_propensity"),
        (h.topic_imp, orjson.dumps(_imp(h, 3)).replace(
            b'"served_at"', f'"items":[{big}],"served_at"'.encode()), "out_of_range"),
        (h.topic_imp, orjson.dumps(_imp(h, 4)).replace(
            b'"served_at"', f'"context":{{"n":{big}}},"served_at"'.encode()), "out_of_range"),
        (h.topic_imp, orjson.dumps(_imp(h, 5, context={"s": "a\x00b"})), "bad_string"),
        (h.topic_imp, orjson.dumps(_imp(h, 6)).replace(
            b'"served_at"', b'"context":{"x":NaN},"served_at"'), "non_finite"),
        (h.topic_imp, orjson.dumps(_imp(h, 7, unit_id="u\x00")), "bad_identifier"),
        # 900 KB: its dead letter (base64) would be over the DLQ producer's request size
        (h.topic_imp, orjson.dumps(_imp(h, 8, context={"pad": "x" * 900_000})), "too_large"),
    ]


def test_poison_records_are_dead_lettered_and_the_consumer_keeps_going(
    harness: Callable[..., Harness],
) -> None:
    import base64
    import hashlib

    h = harness(1)
    poison = _poison(h)
    good = h.events(2_000, seed=11)
    h.produce(good[:1_000], raw=[(t, v) for t, v, _ in poison])
    h.produce(good[1_000:])
    h.start()
    h.wait_committed(h.records)
    h.stop_all()
    h.assert_exact()
    dlq = h.dlq(expect=len(poison))
    assert sorted(d["reason"] for d in dlq) == sorted(r for _, _, r in poison)
    big = next(d for d in dlq if d["reason"] == "too_large")
    raw = poison[-1][1]
    assert raw is not None and big["raw_truncated"] is True
    assert big["raw_length"] == len(raw)
    assert big["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert raw.startswith(base64.b64decode(big["raw"]))
    c = h.counters()
    assert sum(c.get(r, 0) for r in {r for _, _, r in poison}) == len(poison)


@pytest.mark.parametrize(("update", "error"), [
    ({"items": [123456789012345678901234567890]}, "TypeError"),  # the JSON encoder refuses it
    ({"unit_id": "u\x00"}, "DataError"),  # PostgreSQL refuses it
])
def test_a_record_the_database_rejects_is_bisected_out(
    harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch,
    update: dict[str, Any], error: str,
) -> None:
    """A validation gap (simulated: a decoder that lets one bad value through) must cost one
    dead letter, not the consumer: the batch is bisected, the one record that cannot be
    written goes to the DLQ as ``unprocessable`` and every other record is counted."""
    from armlab.bootstrap import bootstrap
    from armlab.core import events
    from armlab.services import consumer as ingest_service
    from armlab.settings import KafkaSettings, Settings

    h = harness(1)
    lax_raw = orjson.dumps(_imp(h, 1, context={"lax": True}))
    strict = events.decode

    def lax_decode(raw: bytes | None, expected: Any = None) -> Any:
        if raw == lax_raw:
            ev = events.ImpressionV1.model_validate_json(raw)
            return ev.model_copy(update=update)
        return strict(raw, expected)

    monkeypatch.setattr(ingest_service, "decode", lax_decode)
    good = h.events(1_000, seed=12)
    h.produce(good[:500], raw=[(h.topic_imp, lax_raw)])
    h.produce(good[500:])
    settings = Settings(database_url=h.pg_url, kafka=KafkaSettings(bootstrap=h.bootstrap),
                        topic_impressions=h.topic_imp, topic_feedback=h.topic_fb,
                        topic_dlq=h.topic_dlq, consumer_group=h.group)
    svc = bootstrap(settings)
    runner = svc.ingest_runner(max_batch=5000)
    try:
        deadline = time.monotonic() + 90
        while h.committed() < h.records and time.monotonic() < deadline:
            runner.step()
    finally:
        runner.close()
        svc.close()
    assert h.committed() == h.records
    h.assert_exact()
    (dead,) = h.dlq(expect=1)
    assert dead["reason"] == "unprocessable" and error in dead["detail"], dead
    assert h.counters()["unprocessable"] == 1


# -- fuzz: a seeded corpus of hostile records mixed with good events ----------------------------
FUZZ_RECORDS = 10_000


def test_fuzz_corpus_never_stops_the_consumer_and_accounting_is_exact(
    harness: Callable[..., Harness],
) -> None:
    """10,000 generated hostile records (armlab.tools.fuzz: arbitrary bytes and JSON, extreme
    numbers, control characters, deep nesting, swapped types, oversized records) interleaved
    with 6,000 good events. The consumer never exits; every record is either counted or
    dead-lettered exactly once (by topic/partition/offset); the good experiment's statistics
    equal the reference computed from the good events alone. Valid-looking fuzz records name a
    second running experiment, so they go through the handlers and the database writes."""
    from armlab.core.event_effects import OK_OUTCOMES, OUT_RESOLVED
    from armlab.tools.fuzz import fuzz_records

    h = harness(2)
    sink_key = f"fz-{uuid.uuid4().hex[:6]}"
    with h.sf() as s, s.begin():
        e = Experiment(key=sink_key, name="fuzz", control_arm_key="a", salt="s",
                       status="running", reward_kind="continuous", reward_metric="click",
                       attribution_window_s=3600)
        e.arms = [Arm(key=a, is_control=i == 0, position=i) for i, a in enumerate("ab")]
        s.add(e)
    topics = {"impression": h.topic_imp, "feedback": h.topic_fb}
    fuzz = [(topics[r.topic], r.value)
            for r in fuzz_records(FUZZ_RECORDS, seed=2026, experiment_key=sink_key, arms="ab")]
    good = h.events(6_000, seed=14)
    for k in range(4):  # interleaved in four rounds
        h.produce(good[k * 1500:(k + 1) * 1500], raw=fuzz[k * 2500:(k + 1) * 2500])
    h.start()
    h.wait_committed(h.records)  # default 240 s: room for a 60 s client rebuild under load
    h.stop_all()  # it never exited on its own: wait_committed fails on a dead consumer
    h.assert_exact()
    c = h.counters()
    ok = sum(n for reason, n in c.items() if reason in OK_OUTCOMES and reason != OUT_RESOLVED)
    rejected = sum(n for reason, n in c.items() if reason not in OK_OUTCOMES)
    dlq = h.dlq(expect=rejected, timeout=90)
    by_record = {(d["topic"], d["partition"], d["offset"]) for d in dlq if d["offset"] >= 0}
    from_pending = {(d["reason"], d["raw"]) for d in dlq if d["offset"] < 0}
    assert ok + len(by_record) == h.records
    assert rejected == len(by_record) + len(from_pending)
    assert all(d["reason"] and d["detail"] for d in dlq)
    # validation must not let through a value the database refuses (no bisection needed)
    assert c.get("unprocessable", 0) == 0
    assert ok > 6_000  # some fuzz records are valid events of the sink experiment


# -- exactly once across a consumer group: copies of one event on partitions of two members -----
def _copies(h: Harness, events: list[SynthEvent], seed: int) -> tuple[
        list[tuple[str, int, bytes, bytes]], dict[str, int]]:
    """Every event sent to its key's partition, and a third of them sent again to ANOTHER
    partition (what an unkeyed client, a retry landing elsewhere or a repartitioned topic
    does), in four shapes: an exact copy; an impression with a new event_id; one with a new
    event_id and a served_at a second earlier; a feedback exact copy. Returns the records
    (topic, partition, key, value) and the outcome each shape must get."""
    from kafka.partitioner.default import murmur2

    rng = random.Random(seed)
    out: list[tuple[str, int, bytes, bytes]] = []
    shapes = {"duplicate": 0, "duplicate_impression": 0}
    parts = 4
    for ev in events:
        topic = h.topic_imp if ev.kind == "impression" else h.topic_fb
        home = (murmur2(ev.key) & 0x7FFFFFFF) % parts
        out.append((topic, home, ev.key, ev.value))
        if rng.random() >= 1 / 3:
            continue
        other = (home + rng.randrange(1, parts)) % parts
        copy = dict(ev.fields)
        shape = rng.randrange(3) if ev.kind == "impression" else 0
        if shape == 0:
            shapes["duplicate"] += 1
        else:
            copy["event_id"] = f"{copy['event_id']}-copy"
            if shape == 2:
                served = datetime.fromisoformat(str(copy["served_at"]))
                copy["served_at"] = (served - timedelta(seconds=1)).isoformat()
            shapes["duplicate_impression"] += 1
        out.append((topic, other, ev.key, orjson.dumps(copy)))
    rng.shuffle(out)  # copies may arrive before their originals
    return out, shapes


def test_copies_spread_over_partitions_count_once_across_a_consumer_group(
    harness: Callable[..., Harness],
) -> None:
    """Two, then three consumer processes in one group on 4 partitions (a rebalance), one
    SIGKILLed and replaced half-way (another): every impression and feedback, whichever of
    its copies a member reads first, changes the statistics once, and each copy gets its
    outcome (an exact copy: ``duplicate``; a new event_id: ``duplicate_impression``, never
    ``conflicting_duplicate``). Failed in 3 of 6 runs before the batches serialised on the
    ids they share (the sums counted 450 or 600 impressions for 300)."""
    from kafka import KafkaProducer

    h = harness(4)
    # feedback delays of 1..3599 s in a 3600 s window: a copy served a second earlier still
    # attributes every feedback, so the reference does not depend on which copy is stored
    events = h.events(8_000, seed=21, kinds=("click", "skip"))
    records, shapes = _copies(h, events, seed=22)
    h.sent.extend(ev.fields for ev in events)
    first, second = records[: len(records) // 2], records[len(records) // 2:]
    p = KafkaProducer(bootstrap_servers=[h.bootstrap], acks="all", linger_ms=20)
    for topic, part, key, value in first:
        p.send(topic, key=key, value=value, partition=part)
    p.flush()
    h.records += len(first)
    h.start()
    h.start()
    h.wait_committed(h.records // 2)
    h.start()  # a third member: the group rebalances mid-stream
    for topic, part, key, value in second:
        p.send(topic, key=key, value=value, partition=part)
    p.flush()
    p.close()
    h.records += len(second)
    h.wait_committed(h.records * 2 // 3)
    victim = h.procs[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    h.procs.remove(victim)
    replacement = h.start()
    h.wait_committed(h.records)
    # The others may finish before the replacement has joined; stop it only once its loop
    # runs (its SIGTERM handler is installed), seen as its first lag report.
    h.wait_reporting(replacement)
    h.stop_all()
    h.assert_exact()
    c = h.counters()
    assert c["impression"] == sum(1 for e in events if e.kind == "impression")
    assert c.get("duplicate", 0) == shapes["duplicate"]
    assert c.get("duplicate_impression", 0) == shapes["duplicate_impression"]
    assert c.get("conflicting_duplicate", 0) == 0
    with h.sf() as s:
        stored = s.scalar(select(func.count()).select_from(Impression)
                          .where(Impression.experiment_id == h.exp_id))
    assert stored == c["impression"]


@pytest.mark.parametrize("shape", ["exact", "new_event_id", "new_event_id_earlier", "feedback"])
def test_two_members_handling_one_event_at_the_same_moment_count_it_once(
    harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch, shape: str,
) -> None:
    """Deterministic form of the race: member A has written a batch holding impression X
    (or a feedback) and not committed yet when member B handles a copy from another
    partition. B must wait for A and then see A's row, not count X a second time."""
    import threading

    from armlab.adapters.db import consumer_store as store
    from armlab.adapters.kafka.memory import MemoryRecord
    from armlab.services.consumer import IngestRunner

    h = harness(2)
    at = datetime.fromisoformat(RECENT)
    imp = _imp(h, 1, served_at=at.isoformat())
    fb = {"schema": "feedback.v1", "event_id": "p1f", "impression_id": "p1i",
          "experiment_key": h.exp_key, "kind": "click", "value": 1.0,
          "occurred_at": (at + timedelta(seconds=5)).isoformat()}
    copy = dict(fb if shape == "feedback" else imp)
    if shape.startswith("new_event_id"):
        copy["event_id"] = "p1e-copy"
    if shape == "new_event_id_earlier":
        copy["served_at"] = (at - timedelta(seconds=1)).isoformat()
    topic = h.topic_fb if shape == "feedback" else h.topic_imp
    a_recs = [MemoryRecord(h.topic_imp, 0, 0, b"k", orjson.dumps(imp))]
    if shape == "feedback":
        a_recs.append(MemoryRecord(h.topic_fb, 0, 0, b"k", orjson.dumps(fb)))
    b_recs = [MemoryRecord(topic, 1, 0, b"k", orjson.dumps(copy))]

    written = threading.Event()
    release = threading.Event()
    real_write = store.write_effects

    def slow_write(session: Any, group: str, fx: Any) -> None:
        real_write(session, group, fx)
        if threading.current_thread().name == "member-a":
            written.set()
            release.wait(10)  # A holds its transaction open

    monkeypatch.setattr(store, "write_effects", slow_write)

    def member() -> IngestRunner:
        r = IngestRunner(SqlIngestStore(h.sf), source=None, group=h.group,  # type: ignore[arg-type]
                         topic_impressions=h.topic_imp, topic_feedback=h.topic_fb)
        for tp in [(h.topic_imp, 0), (h.topic_imp, 1), (h.topic_fb, 0), (h.topic_fb, 1)]:
            r._committed[tp] = None
        return r

    a, b = member(), member()
    ta = threading.Thread(target=a.process, args=(a_recs,), name="member-a")
    ta.start()
    assert written.wait(30)
    tb = threading.Thread(target=b.process, args=(b_recs,), name="member-b")
    tb.start()
    tb.join(1.0)  # B runs into A's uncommitted rows: it must wait (or find nothing to do)
    release.set()
    ta.join(30)
    tb.join(30)
    assert not ta.is_alive() and not tb.is_alive()
    totals = h.stats()
    assert sum(v["n"] for v in totals.values()) == 1
    with h.sf() as s:
        assert s.scalar(select(func.count()).select_from(Impression)
                        .where(Impression.experiment_id == h.exp_id)) == 1
    c = h.counters()
    expected = {"exact": "duplicate", "new_event_id": "duplicate_impression",
                "new_event_id_earlier": "duplicate_impression", "feedback": "duplicate"}[shape]
    assert c.get(expected) == 1, c
    if shape == "feedback":
        assert sum(v["reward_sum"] for v in totals.values()) == 1.0


# -- offsets that cannot silently skip data -------------------------------------------------------
def test_a_recreated_topic_stops_the_consumer_until_the_group_is_reset(
    harness: Callable[..., Harness], kafka: Any,
) -> None:
    """A topic deleted and created again starts at offset 0 while the database keeps the
    group's offsets: `armlab consume` refuses to start with one line naming the partition,
    both offsets and the reset command (it used to skip every record, silently); after
    `armlab offsets reset` the new log is read and counted exactly."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

    h = harness(1)
    h.produce(h.events(600, seed=31))
    p = h.start("--exit-when-idle", "3")
    h.wait_committed(h.records)
    assert p.wait(timeout=120) == 0
    h.procs.remove(p)
    admin = kafka.admin()
    try:
        admin.delete_topics([h.topic_imp, h.topic_fb])
        deadline = time.monotonic() + 60
        while True:  # the broker finishes the deletion in the background
            try:
                admin.create_topics([NewTopic(h.topic_imp, 1, 1), NewTopic(h.topic_fb, 1, 1)],
                                    wait_for_metadata=True)
                break
            except (TopicAlreadyExistsError, UnknownTopicOrPartitionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        admin.close()
    before = h.stats()
    h.produce(h.events(200, seed=32))  # 200 < the stored offsets: all would be skipped
    p = h.start("--exit-when-idle", "3")
    assert p.wait(timeout=120) == 1
    h.procs.remove(p)
    err = h.log_tail(p)
    assert f"armlab offsets reset --group {h.group}" in err, err
    assert f"{h.topic_imp}[0] stored " in err and "log ends at" in err
    assert h.stats() == before  # nothing skipped, nothing counted
    reset = subprocess.run([sys.executable, "-m", "armlab", "offsets", "reset", "--group",
                            h.group], env=h.env(), capture_output=True, text=True, timeout=120)
    assert reset.returncode == 0, reset.stderr
    h.start()
    h.wait_committed(200)  # the stored offsets now count the new logs' records only
    h.stop_all()
    h.assert_exact()  # the 600 events before and the 200 after, each once
