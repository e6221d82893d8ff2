"""Records from other Kafka clients, and batches no client can decode, on a real broker.

The consumer (`armlab consume` processes, the Harness of test_ingest.py) reads what
librdkafka (confluent-kafka) and Kafka's own Java producer (ConsoleProducer from the broker's
distribution) write: every codec (none, gzip, snappy, lz4, zstd), keys and null keys, headers,
LogAppendTime topics, and transactions (an aborted one must not count). Per-arm statistics
are compared with ``==`` against armlab.tools.synth.expected_stats of the events that must
count. Batches that cannot be decoded (a gzip bomb over the decompression bound; on the
broker's disk: an unknown codec id, corrupt zstd data, a CRC mismatch) are each dead-lettered
once with their reason while the records after them are counted.
"""

from __future__ import annotations

import os
import struct
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.record.util import calc_crc32c
from sqlalchemy import select

from armlab.adapters.db.models import ConsumerLag
from armlab.core.event_effects import OUT_RESOLVED
from armlab.tools.devstack import find_java, kafka_libs_dir
from armlab.tools.synth import SynthEvent
from tests.reliability.test_ingest import Harness

pytestmark = pytest.mark.reliability

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


@pytest.fixture()
def harness(pg_url: str, kafka_bootstrap: str,
            kafka_topic_factory: Callable[..., str]) -> Iterator[Callable[..., Harness]]:
    """test_ingest's Harness: a running experiment, topics, `armlab consume` processes."""
    made: list[Harness] = []

    def make(partitions: int = 2) -> Harness:
        h = Harness(pg_url, kafka_bootstrap, kafka_topic_factory(partitions, "imp"),
                    kafka_topic_factory(partitions, "fb"), kafka_topic_factory(1, "dlq"))
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


# -- helpers ----------------------------------------------------------------------------------
def rdkafka(h: Harness, **conf: Any) -> Producer:
    return Producer({"bootstrap.servers": h.bootstrap, "linger.ms": 20, "acks": "all",
                     "enable.idempotence": True, **conf})


def rd_send(p: Producer, h: Harness, events: Iterable[SynthEvent], *, null_keys: bool = False,
            headers: bool = False) -> int:
    n = 0
    for i, ev in enumerate(events):
        topic = h.topic_imp if ev.kind == "impression" else h.topic_fb
        p.produce(topic, value=ev.value, key=None if null_keys else ev.key,
                  headers=[("src", b"librdkafka"), ("i", str(i).encode()), ("empty", None)]
                  if headers else None)
        n += 1
        if n % 5000 == 0:
            p.poll(0)
    return n


def flush(p: Producer) -> None:
    left = p.flush(60)
    assert left == 0, f"{left} records not delivered"


def counted(h: Harness) -> int:
    """Records handled so far (counted or dead-lettered), whatever offsets they took."""
    return sum(n for reason, n in h.counters().items() if reason != OUT_RESOLVED)


def wait_counted(h: Harness, target: int, timeout: float = 180.0) -> None:
    """Like Harness.wait_committed, by the ingest counters: transaction markers and aborted
    records take offsets but are never handed to the consumer."""
    deadline = time.monotonic() + timeout
    while (n := counted(h)) < target:
        for p in h.procs:
            if p.poll() is not None:
                pytest.fail(f"consumer exited rc={p.returncode}: {h.log_tail(p)}")
        if time.monotonic() > deadline:
            pytest.fail(f"timeout: {n} of {target} records handled\n"
                        + "\n".join(h.log_tail(p) for p in h.procs))
        time.sleep(0.2)
    assert n == target, f"{n} records handled, {target} expected"


def make_topics(h: Harness, partitions: int, config: dict[str, str]) -> None:
    """Fresh impression/feedback topics with a topic config (the fixture's have none)."""
    admin = KafkaAdminClient(bootstrap_servers=[h.bootstrap])
    try:
        suffix = os.urandom(4).hex()
        h.topic_imp, h.topic_fb = f"imp-cfg-{suffix}", f"fb-cfg-{suffix}"
        admin.create_topics([NewTopic(t, partitions, 1, topic_configs=config)
                             for t in (h.topic_imp, h.topic_fb)], wait_for_metadata=True)
    finally:
        admin.close()


def dead_letters(h: Harness, n: int) -> list[dict[str, Any]]:
    got = h.dlq(expect=n)
    assert len(got) == n, [(d["reason"], d["detail"]) for d in got]
    return got


def codecs_in_log(kafka: Any, topics: Iterable[str]) -> set[str]:
    """The codecs of the batches the broker stored for ``topics`` (all partitions): what the
    producers really sent, read from the log files."""
    names = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
    out = set()
    for topic in topics:
        for d in (Path(kafka.data_dir) / "kraft").glob(f"{topic}-*"):
            for _, (_pos, _size, _delta, attrs) in _batches(d / SEGMENT).items():
                out.add(names.get(attrs & 0x07, str(attrs & 0x07)))
    return out


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


# -- librdkafka ------------------------------------------------------------------------------
def test_librdkafka_every_codec_keys_null_keys_and_headers(
    harness: Callable[..., Harness], kafka: Any,
) -> None:
    """2,000 events in each codec from librdkafka (zstd with null keys, lz4 with headers),
    one consumer: statistics exact, nothing dead-lettered. Before the codec libraries were
    dependencies, the first snappy/lz4/zstd batch stopped `armlab consume`
    (UnsupportedCodecError) at the same offset on every restart."""
    h = harness(2)
    total = 0
    for seed, codec in enumerate(CODECS):
        events = h.events(2_000, seed=100 + seed)
        p = rdkafka(h, **{"compression.type": codec})
        total += rd_send(p, h, events, null_keys=codec == "zstd",
                         headers=codec in ("lz4", "gzip"))
        flush(p)
        h.sent.extend(e.fields for e in events)
    h.records = total
    assert codecs_in_log(kafka, (h.topic_imp, h.topic_fb)) == set(CODECS)
    h.start()
    h.wait_committed(total)
    h.stop_all()
    h.assert_exact()
    c = h.counters()
    assert set(c) <= {"impression", "feedback_applied", "feedback_pending",
                      "pending_resolved"}, c  # nothing dead-lettered


def test_librdkafka_transactions_on_a_log_append_time_topic(harness: Callable[..., Harness]
                                                            ) -> None:
    """A transactional librdkafka producer (gzip) writes one transaction that it aborts and
    one that it commits, between plain idempotent records, then a last committed transaction,
    on topics whose timestamps the broker sets (LogAppendTime). Only the committed and the
    plain records count (the consumer read ``read_uncommitted`` before: the aborted events
    were counted), and the lag the consumer reports ends at 0 although each partition's
    last offset is a transaction marker, which no record ever commits past."""
    h = harness(1)
    make_topics(h, 2, {"message.timestamp.type": "LogAppendTime"})
    before, aborted, committed, after, last = (h.events(1_500, seed=s)
                                               for s in (21, 22, 23, 24, 25))
    plain = rdkafka(h, **{"compression.type": "none"})
    n = rd_send(plain, h, before)
    flush(plain)
    tx = rdkafka(h, **{"transactional.id": f"tx-{h.group}", "compression.type": "gzip"})
    tx.init_transactions(30)
    tx.begin_transaction()
    rd_send(tx, h, aborted, headers=True)
    tx.flush(30)
    tx.abort_transaction(30)
    tx.begin_transaction()
    n += rd_send(tx, h, committed, headers=True)
    tx.commit_transaction(30)
    n += rd_send(plain, h, after)
    flush(plain)
    tx.begin_transaction()
    n += rd_send(tx, h, last)
    tx.commit_transaction(30)
    tps = [TopicPartition(t, p) for t in (h.topic_imp, h.topic_fb) for p in (0, 1)]
    probe = KafkaConsumer(bootstrap_servers=[h.bootstrap])  # read_uncommitted: the log end
    try:
        ends = probe.end_offsets(tps)
    finally:
        probe.close()
    # the aborted records are in the log (they take offsets), and so are the markers
    assert sum(ends.values()) >= n + len(aborted) + 2, (ends, n)
    h.sent.extend(e.fields for e in (*before, *committed, *after, *last))
    h.start()
    wait_counted(h, n)
    time.sleep(3)  # nothing more may arrive (an aborted record would)
    assert counted(h) == n
    h.stop_all()
    h.assert_exact()
    with h.sf() as s:
        rows = s.execute(select(ConsumerLag.topic, ConsumerLag.partition, ConsumerLag.position,
                                ConsumerLag.high_watermark, ConsumerLag.lag)
                         .where(ConsumerLag.group_id == h.group)).all()
    assert len(rows) == 4, rows
    for topic, part, position, _hw, lag in rows:
        assert position < ends[TopicPartition(topic, part)]  # stored before the marker
        assert lag == 0, rows


# -- Kafka's own Java producer ----------------------------------------------------------------
def console_producer(h: Harness, topic: str, lines: list[bytes], codec: str) -> None:
    """`kafka-console-producer` (org.apache.kafka.tools.ConsoleProducer) with ``codec``,
    reading "headers<TAB>key<TAB>value" lines (key "NULL": a null key)."""
    libs = kafka_libs_dir()
    if not any(libs.glob("kafka-tools-[0-9]*.jar")):
        pytest.fail(f"kafka-tools jar missing in {libs}: run `make kafka-jars` (the pom in "
                    "armlab/tools/kafka declares it)")
    cmd = [find_java(), "-Xmx256m", "-cp", f"{libs}/*",
           "org.apache.kafka.tools.ConsoleProducer", "--bootstrap-server", h.bootstrap,
           # (--compression-codec, not compression.type: ConsoleProducer sets the property
           # from its own option, default none, over --command-property; same for batch.size
           # and --batch-size, linger.ms and --timeout)
           "--topic", topic, "--compression-codec", codec, "--batch-size", "1000000",
           "--timeout", "100", "--reader-property", "parse.key=true",
           "--reader-property", "parse.headers=true", "--reader-property", "null.marker=NULL"]
    res = subprocess.run(cmd, input=b"\n".join(lines) + b"\n", capture_output=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-3000:]


def test_kafka_java_console_producer_in_every_codec(
    harness: Callable[..., Harness], kafka: Any,
) -> None:
    """Kafka's own Java producer writes 1,500 events in each of gzip, snappy, lz4 and zstd
    (impressions and feedback in different codecs; headers; some null keys; batches up to
    1 MB): statistics exact, nothing dead-lettered."""
    h = harness(2)
    total = 0
    for seed, (imp_codec, fb_codec) in enumerate((("zstd", "snappy"), ("lz4", "gzip"))):
        events = h.events(3_000, seed=30 + seed)
        by_topic: dict[str, list[bytes]] = {h.topic_imp: [], h.topic_fb: []}
        for i, ev in enumerate(events):
            key = b"NULL" if i % 7 == 0 else ev.key
            topic = h.topic_imp if ev.kind == "impression" else h.topic_fb
            by_topic[topic].append(b"src:java,i:%d\t%s\t%s" % (i, key, ev.value))
        console_producer(h, h.topic_imp, by_topic[h.topic_imp], imp_codec)
        console_producer(h, h.topic_fb, by_topic[h.topic_fb], fb_codec)
        total += len(events)
        h.sent.extend(e.fields for e in events)
    h.records = total
    assert codecs_in_log(kafka, (h.topic_imp, h.topic_fb)) == {"gzip", "snappy", "lz4", "zstd"}
    h.start()
    h.wait_committed(total)
    h.stop_all()
    h.assert_exact()
    assert h.counters().get("undecodable_batch", 0) == 0


# -- batches nobody can decode ----------------------------------------------------------------
def test_gzip_bomb_is_dead_lettered_with_bounded_memory(harness: Callable[..., Harness]
                                                        ) -> None:
    """One 128 MiB record gzip'd to about 0.13 MB (far under the topic's 1 MB limit): the
    consumer dead-letters its batch as ``too_large`` after decompressing at most the bound
    (32 MiB), its peak memory grows by less than 100 MiB, and the records after it count.
    (Before: the whole record was decompressed, the peak grew by ~4x its size.)"""
    h = harness(1)
    first, second = h.events(1_000, seed=41), h.events(1_000, seed=42)
    h.produce(first)
    p = h.start()
    h.wait_committed(h.records)
    time.sleep(1.0)
    base = vm_hwm_kib(p.pid)
    bomb = rdkafka(h, **{"compression.type": "gzip", "compression.level": 9,
                         "message.max.bytes": 400_000_000, "enable.idempotence": False})
    size = int(os.environ.get("ARMLAB_TEST_BOMB_MB", "128")) * 1024 * 1024  # README: 210
    bomb.produce(h.topic_imp, value=bytes(size), key=b"bomb")
    flush(bomb)
    del bomb
    h.records += 1
    h.produce(second)
    h.wait_committed(h.records)
    peak = vm_hwm_kib(p.pid)
    grown_mib = (peak - base) / 1024
    print(f"bomb {size} bytes: consumer peak RSS {base / 1024:.0f} MiB before, "
          f"{peak / 1024:.0f} MiB after")
    h.stop_all()
    h.assert_exact()
    assert grown_mib < 100, f"consumer peak memory grew by {grown_mib:.0f} MiB"
    (dead,) = dead_letters(h, 1)
    assert dead["reason"] == "too_large", dead
    assert "gzip batch" in dead["detail"] and "more than 33554432 bytes" in dead["detail"]
    assert dead["raw_length"] < 1_000_000  # the batch as fetched, not what it expands to
    assert h.counters()["too_large"] == 1


SEGMENT = "00000000000000000000.log"


def _segment(kafka: Any, topic: str) -> Path:
    seg = Path(kafka.data_dir) / "kraft" / f"{topic}-0" / SEGMENT
    assert seg.exists(), seg
    return seg


def _batches(seg: Path) -> dict[int, tuple[int, int, int, int]]:
    """base offset -> (file position, batch size, last offset delta, attributes) of every
    batch in a log segment."""
    data = seg.read_bytes()
    out: dict[int, tuple[int, int, int, int]] = {}
    pos = 0
    while pos + 27 <= len(data):
        base, length = struct.unpack_from(">qi", data, pos)
        attrs, delta = struct.unpack_from(">hi", data, pos + 21)
        out[base] = (pos, 12 + length, delta, attrs)
        pos += 12 + length
    return out


def _damage(seg: Path, base: int, how: Callable[[bytearray], None], fix_crc: bool) -> None:
    """Rewrite one batch in place in the broker's log file (the broker serves the file as it
    is: this is what a bad disk or a buggy producer would leave there)."""
    pos, size, _, _ = _batches(seg)[base]
    with open(seg, "r+b") as f:
        f.seek(pos)
        batch = bytearray(f.read(size))
        how(batch)
        if fix_crc:
            struct.pack_into(">I", batch, 17, calc_crc32c(memoryview(batch)[21:]))
        f.seek(pos)
        f.write(batch)
        f.flush()
        os.fsync(f.fileno())


def test_undecodable_batches_on_the_broker_are_dead_lettered(
    harness: Callable[..., Harness], kafka: Any,
) -> None:
    """Four impression batches are damaged in the broker's log file: codec id 6 (no such
    codec, CRC made valid), a zstd batch whose compressed bytes are garbage (CRC made valid),
    a bit flipped in a plain batch (CRC mismatch), and one record's header key made invalid
    UTF-8 (CRC made valid; a broker stores header keys as sent). The first three are each
    dead-lettered once as ``undecodable_batch`` naming codec and offsets, the record with the
    bad header alone as ``undecodable_record``; the records between and after them count
    exactly (the feedback of a lost impression stays pending). (Before: the first damaged
    batch stopped the consumer, at the same offset on every restart.)"""
    h = harness(1)
    groups = [h.events(300, seed=50 + i) for i in range(8)]
    bases: list[int] = []
    imp_offsets: dict[int, SynthEvent] = {}
    for i, events in enumerate(groups):
        codec = {1: "gzip", 3: "zstd", 5: None, 6: None}.get(i, "gzip")
        p = KafkaProducer(bootstrap_servers=[h.bootstrap], acks="all", linger_ms=1000,
                          batch_size=1 << 20, compression_type=codec)
        futures = [p.send(h.topic_imp if ev.kind == "impression" else h.topic_fb,
                          key=ev.key, value=ev.value, headers=[("src", b"k")])
                   for ev in events]
        p.flush()
        p.close()
        offsets = {f.get().offset: ev for f, ev in zip(futures, events, strict=True)
                   if ev.kind == "impression"}
        bases.append(min(offsets))
        imp_offsets.update(offsets)
    seg = _segment(kafka, h.topic_imp)
    in_log = _batches(seg)
    damaged = {i: range(bases[i], bases[i] + in_log[bases[i]][2] + 1) for i in (1, 3, 5)}
    assert [in_log[bases[i]][3] & 0x07 for i in (1, 3, 5, 6)] == [1, 4, 0, 0]
    assert in_log[bases[6]][2] >= 2  # the header damage hits the batch's third record
    bad_record = bases[6] + 2
    lost = {o for r in damaged.values() for o in r} | {bad_record}  # impressions lost
    lost_ids = {imp_offsets[o].fields["event_id"] for o in lost}
    h.sent = [ev.fields for g in groups for ev in g if ev.fields["event_id"] not in lost_ids]

    def codec6(b: bytearray) -> None:
        b[22] = (b[22] & 0xF8) | 6

    def garbage(b: bytearray) -> None:
        b[61 + 20:61 + 60] = os.urandom(40)

    def flip(b: bytearray) -> None:
        b[-40] ^= 0x10

    def bad_header_key(b: bytearray) -> None:
        at = -1
        for _ in range(3):  # the third record's header: key "src" (length varint 0x06)
            at = b.index(b"\x06src", at + 1)
        b[at + 1] = 0xFF

    _damage(seg, bases[1], codec6, fix_crc=True)
    _damage(seg, bases[3], garbage, fix_crc=True)
    _damage(seg, bases[5], flip, fix_crc=False)
    _damage(seg, bases[6], bad_header_key, fix_crc=True)
    # The feedback of the damaged groups waits for impressions that never come: pending.
    h.start()
    h.wait_committed(sum(len(g) for g in groups))
    h.stop_all()
    dead = sorted(dead_letters(h, 4), key=lambda d: d["offset"])
    assert [d["reason"] for d in dead] == ["undecodable_batch"] * 3 + ["undecodable_record"]
    assert "unknown codec id 6" in dead[0]["detail"]
    assert "zstd batch" in dead[1]["detail"]
    assert "CRC mismatch" in dead[2]["detail"] and "none batch" in dead[2]["detail"]
    for d, i in zip(dead[:3], (1, 3, 5), strict=True):
        first, last = damaged[i][0], damaged[i][-1]
        assert f"offsets {first}-{last}" in d["detail"], d["detail"]
        assert d["offset"] == last
    assert dead[3]["offset"] == bad_record
    assert f"record at offset {bad_record} does not parse: UnicodeDecodeError" in \
        dead[3]["detail"]
    c = h.counters()
    assert c["undecodable_batch"] == 3 and c["undecodable_record"] == 1
    assert c["impression"] == len(imp_offsets) - len(lost)
    assert lost and len(lost) < len(imp_offsets) // 2
    h.assert_exact()
