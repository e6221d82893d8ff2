"""The ingest runner (:class:`armlab.services.consumer.IngestRunner`) on the in-memory store of
``tests/fakes_ingest.py``: one stream (duplicates, feedback before its impression, late
feedback, a record that is not JSON, guardrail metrics) drained from the in-process bus has
the same effects as on SQLite through the database adapter (outcome counts, per-arm and
guardrail sums read through the evidence port, offsets, dead letters), matches the reference
computed from the events, and feeds the allocator the same snapshot; a batch is one
transaction; a second consumer resumes from the stored offsets."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from armlab.adapters.db.engine import make_engine, make_session_factory
from armlab.adapters.kafka.memory import MemoryBus, MemoryDlq, MemorySource
from armlab.core.event_effects import Effects
from armlab.core.fencing import Fenced
from armlab.services.allocator import run_allocation
from armlab.services.consumer import IngestRunner, IngestStore
from armlab.tools.synth import expected_stats, synthetic_events
from tests.fakes_ingest import MemoryIngestStore
from tests.store_backends import (
    Backend,
    MemoryBackend,
    SqliteBackend,
    plain,
    rounded,
    snapshot_summary,
)

IMPRESSIONS, FEEDBACK, DLQ = "armlab.impressions", "armlab.feedback", "armlab.dlq"
ARMS = ("a", "b", "c")
TP = (IMPRESSIONS, 0)


@pytest.fixture()
def sqlite(sqlite_url: str) -> Iterator[SqliteBackend]:
    engine = make_engine(sqlite_url)
    yield SqliteBackend(make_session_factory(engine))
    engine.dispose()


def stream() -> tuple[list[tuple[str, bytes, bytes]], list[dict[str, Any]]]:
    """(topic, value, key) records, shuffled a little and 10 % produced twice; the events."""
    events = list(synthetic_events(1500, experiment_key="exp", arms=ARMS, seed=1,
                                   kinds=("click", "dwell"), late_fraction=0.1))
    rng = random.Random(2)
    order = list(range(len(events)))
    for i in range(0, len(order) - 5, 5):
        chunk = order[i:i + 5]
        rng.shuffle(chunk)
        order[i:i + 5] = chunk
    records = []
    for i in order:
        ev = events[i]
        topic = IMPRESSIONS if ev.kind == "impression" else FEEDBACK
        records += [(topic, ev.value, ev.key)] * (2 if rng.random() < 0.1 else 1)
    records.append((IMPRESSIONS, b"\x00not json", b"x"))
    # an impression event delivered again under another impression id (dedupe by event id)
    first = dict(events[0].fields, impression_id="i0-again")
    records.append((IMPRESSIONS, orjson.dumps(first), b"i0-again"))
    return records, [ev.fields for ev in events]


def later_clicks(sent: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A click on the last 150 impressions, after they were stored (the stored reward decides
    what it changes; still immature at the allocation pass, so the snapshot reads it too)."""
    out = []
    for imp in [e for e in sent if e["schema"] == "impression.v1"][-150:]:
        served = datetime.fromisoformat(str(imp["served_at"]))
        out.append({"schema": "feedback.v1", "event_id": f"again-{imp['impression_id']}",
                    "impression_id": imp["impression_id"], "experiment_key": "exp",
                    "kind": "click", "value": 1.0,
                    "occurred_at": (served + timedelta(seconds=30)).isoformat()})
    return out


def runner(store: IngestStore, bus: MemoryBus) -> IngestRunner:
    # Any, as in bootstrap: its records are NamedTuples (read-only), RecordLike plain attributes
    source: Any = MemorySource(bus, [IMPRESSIONS, FEEDBACK])
    return IngestRunner(store, source,
                        dlq=MemoryDlq(bus, DLQ), group="g", topic_impressions=IMPRESSIONS,
                        topic_feedback=FEEDBACK, max_batch=200)


def body(unit: str) -> dict[str, Any]:
    return {"key": "exp", "salt": "salt-exp", "attribution_window_s": 3600, "unit": unit,
            "arms": [{"key": a, "control": i == 0, "variant": {"kind": "popularity"}}
                     for i, a in enumerate(ARMS)],
            "guardrails": [{"key": "dwell_any", "source": {"feedback": "dwell"},
                            "aggregate": "any", "harm": "decrease"},
                           {"key": "dwell_sum", "source": {"feedback": "dwell"},
                            "aggregate": "sum", "harm": "decrease"}]}


def ingest(b: Backend, records: list[tuple[str, bytes, bytes]],
           later: list[dict[str, Any]], unit: str = "request") -> dict[str, Any]:
    exp_id = b.create(body(unit))
    bus = MemoryBus(default_partitions=3)
    for topic, value, key in records:
        bus.produce(topic, value, key)
    store = b.ingest_store()
    counts = runner(store, bus).drain()
    for fb in later:
        bus.produce(FEEDBACK, orjson.dumps(fb), str(fb["impression_id"]).encode())
    counts_later = runner(store, bus).drain()  # a restarted consumer: from the stored offsets
    sums = b.read(lambda uow: uow.evidence.arm_sums(exp_id))
    guard = b.read(lambda uow: uow.evidence.guardrail_sums(exp_id))
    first = min(orjson.loads(v)["served_at"] for t, v, _ in records
                if t == IMPRESSIONS and v.startswith(b"{"))
    now = datetime.fromisoformat(first) + timedelta(seconds=3600 + 400)
    run_allocation(b.allocation_store(), now=now)
    looks = b.read(lambda uow: uow.evidence.latest_decisions(exp_id))
    return {
        "looks": rounded(plain({a: [d.decision, d.p_value, d.n_control, d.n_treatment,
                                    d.evidence] for a, d in looks.items()})),
        "counts": counts, "later": counts_later,
        "sums": {a: s.as_dict() for a, s in sums.items()},
        "guardrails": {m: {a: s.as_dict() for a, s in v.items()} for m, v in guard.items()},
        "offsets": store.stored_offsets("g"),
        "dlq": sorted(orjson.loads(r.value or b"{}")["reason"] for r in bus.records(DLQ)),
        "snapshots": snapshot_summary(b.snapshots(exp_id)),
    }


@pytest.mark.parametrize("unit", ["request", "user"])
def test_a_stream_has_the_same_effects_in_memory_and_on_sqlite(
        sqlite: SqliteBackend, unit: str) -> None:
    """unit user: the look reads per-unit sums (and guardrail sums), from the impressions."""
    records, sent = stream()
    later = later_clicks(sent)
    got = ingest(MemoryBackend(), records, later, unit)
    assert got == ingest(sqlite, records, later, unit)
    counts = got["counts"]
    assert counts["not_json"] == 1 and counts["duplicate"] > 0
    assert counts["feedback_pending"] > 0 and counts["late"] > 0
    assert sum(got["later"].values()) == len(later)  # only the new records, once each
    assert got["sums"] == expected_stats([*sent, *later], reward_kind="binary",
                                         metric="click", window_s=3600)
    assert got["guardrails"]["dwell_sum"] == expected_stats(
        sent, reward_kind="continuous", metric="dwell", window_s=3600)
    assert got["dlq"].count("late") == counts["late"] and "not_json" in got["dlq"]
    assert set(got["looks"]) == {"b", "c"}  # the allocator's look, with the guardrails
    guardrails = got["looks"]["b"][4]["entry"]["guardrails"]
    assert {g["metric"] for g in guardrails} == {"dwell_any", "dwell_sum"}
    (snap,) = got["snapshots"]
    arms = snap["stats"]["arms"]
    assert 0 < arms["a"]["immature_n"] < arms["a"]["n"]  # the served times came through


def test_a_batch_is_one_transaction_in_memory() -> None:
    store = MemoryIngestStore()
    with store.batch() as tx:
        tx.advance_offsets("g", {TP: (None, 10)})
    assert store.load_offsets("g", [TP]) == {TP: 10}
    with pytest.raises(RuntimeError), store.batch() as tx:
        tx.advance_offsets("g", {TP: (10, 20)})
        tx.write_effects("g", Effects())
        raise RuntimeError("the handler failed after the offsets moved")
    assert store.load_offsets("g", [TP]) == {TP: 10}  # rolled back with the batch
    with pytest.raises(Fenced), store.batch() as tx:  # a zombie's start offset
        tx.advance_offsets("g", {TP: (5, 30)})
    with pytest.raises(Fenced), store.batch() as tx:  # another consumer stored it first
        tx.advance_offsets("g", {TP: (None, 30)})
    assert store.load_offsets("g", [TP]) == {TP: 10}
    assert (store.commits, store.rollbacks) == (1, 3)
    assert isinstance(store, IngestStore)
