"""Guarded record batches (armlab.adapters.kafka.batches) through kafka-python's own fetch
code (``Fetcher.PartitionRecords``, what ``poll()`` runs): every codec decodes; a batch that
cannot be decoded becomes ONE synthetic record at its last offset (the position moves past the
batch and the next batch is read); decompression stops at the bound."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import lz4.frame
import pytest
import snappy
import zstandard
from kafka.consumer.fetcher import Fetcher
from kafka.record import MemoryRecords
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.util import calc_crc32c, decode_varint
from kafka.structs import TopicPartition

from armlab.adapters.kafka import batches
from armlab.adapters.kafka.batches import (
    CODEC_GZIP,
    CODEC_LZ4,
    CODEC_NONE,
    CODEC_SNAPPY,
    CODEC_ZSTD,
    TOO_LARGE,
    UNDECODABLE_BATCH,
    UNDECODABLE_RECORD,
    BatchTooLarge,
    fault_of,
    install_guarded_batches,
    uninstall_guarded_batches,
)

TP = TopicPartition("t", 0)
CODECS = [CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD]
HEADER = DefaultRecordBatch.HEADER_STRUCT.size  # 61: the records section starts here
BOUND = 1024 * 1024


@pytest.fixture(autouse=True)
def _guarded() -> Iterator[None]:
    install_guarded_batches(BOUND)
    yield
    uninstall_guarded_batches()


def build(values: list[bytes | None], codec: int = CODEC_NONE, base: int = 0,
          keys: list[bytes | None] | None = None) -> bytearray:
    b = DefaultRecordBatchBuilder(2, codec, False, -1, -1, -1, 1 << 30)
    for i, v in enumerate(values):
        b.append(i, timestamp=1_700_000_000_000 + i, key=keys[i] if keys else b"k%d" % i,
                 value=v, headers=[("h", b"x")] if i % 2 else [])
    buf = b.build()
    struct.pack_into(">q", buf, 0, base)
    return buf


def rewrite(buf: bytearray, *, records: bytes | None = None, attrs: int | None = None,
            fix_crc: bool = True) -> bytearray:
    """The batch with its records section and/or attributes replaced; the length and (unless
    ``fix_crc`` is False) the CRC made consistent again, as a broker's log would hold it."""
    out = bytearray(buf) if records is None else bytearray(buf[:HEADER]) + records
    struct.pack_into(">i", out, 8, len(out) - 12)
    if attrs is not None:
        struct.pack_into(">h", out, DefaultRecordBatch.ATTRIBUTES_OFFSET, attrs)
    if fix_crc:
        crc = calc_crc32c(memoryview(out)[DefaultRecordBatch.ATTRIBUTES_OFFSET:])
        struct.pack_into(">I", out, DefaultRecordBatch.CRC_OFFSET, crc)
    return out


def fetch(*bufs: bytearray, offset: int = 0) -> tuple[list[Any], int]:
    """What a poll hands out for a fetch response holding ``bufs``, and the next position."""
    pr = Fetcher.PartitionRecords(offset, TP, MemoryRecords(b"".join(bytes(b) for b in bufs)),
                                  check_crcs=True)
    recs = pr.take(100_000)
    return recs, pr.next_fetch_offset


VALUES = [b'{"n": %d, "pad": "%s"}' % (i, b"x" * (i % 50)) for i in range(200)]


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_decodes_like_kafka_python(codec: int) -> None:
    buf = build(VALUES, codec, base=100)
    assert buf[DefaultRecordBatch.ATTRIBUTES_OFFSET + 1] & 0x07 == codec  # really compressed
    recs, pos = fetch(buf, offset=100)
    assert [r.value for r in recs] == VALUES
    assert [r.offset for r in recs] == list(range(100, 300))
    assert recs[1].headers == [("h", b"x")] and recs[0].key == b"k0"
    assert pos == 300 and not any(fault_of(r.headers) for r in recs)


def test_raw_snappy_as_librdkafka_writes_it() -> None:
    # kafka-python and the Java client write xerial-framed snappy; librdkafka writes one raw
    # block: both decode.
    plain = build(VALUES)
    raw = snappy.compress(bytes(plain[HEADER:]))
    buf = rewrite(plain, records=raw, attrs=CODEC_SNAPPY)
    recs, pos = fetch(buf)
    assert [r.value for r in recs] == VALUES and pos == 200


@pytest.mark.parametrize("frames", [1, 2])
def test_concatenated_gzip_lz4_zstd_frames(frames: int) -> None:
    plain = bytes(build(VALUES)[HEADER:])
    cut = len(plain) // frames
    parts = [plain[:cut], plain[cut:]] if frames == 2 else [plain]
    for codec, enc in ((CODEC_GZIP, gzip.compress), (CODEC_LZ4, lz4.frame.compress),
                       (CODEC_ZSTD, zstandard.ZstdCompressor().compress)):
        buf = rewrite(build(VALUES), records=b"".join(enc(p) for p in parts), attrs=codec)
        recs, _ = fetch(buf)
        assert [r.value for r in recs] == VALUES, codec


def _only_fault(recs: list[Any], last: int) -> batches.BatchFault:
    assert len(recs) >= 1
    fault = fault_of(recs[-1].headers)
    assert fault is not None, recs[-1]
    assert recs[-1].offset == last and recs[-1].key is None
    return fault


def test_unknown_codec_id_is_one_dead_letter_and_the_next_batch_is_read() -> None:
    bad = rewrite(build(VALUES[:10], base=50), attrs=5)  # codec id 5 does not exist
    good = build(VALUES[:3], base=60)
    recs, pos = fetch(bad, good, offset=50)
    fault = _only_fault(recs[:1], last=59)
    assert fault.reason == UNDECODABLE_BATCH
    assert "unknown codec id 5" in fault.detail and "offsets 50-59" in fault.detail
    assert recs[0].value == bytes(bad)  # the batch as fetched, for the dead letter
    assert [r.value for r in recs[1:]] == VALUES[:3] and pos == 63


@pytest.mark.parametrize("codec", [CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD])
def test_corrupt_compressed_data_is_one_dead_letter(codec: int) -> None:
    buf = build(VALUES, codec)
    damaged = bytearray(buf)
    mid = HEADER + (len(buf) - HEADER) // 2
    damaged[mid:mid + 16] = b"\xa5" * 16
    damaged[HEADER:HEADER + 4] = b"\x00\xff\x00\xff"  # break the format's header too
    recs, pos = fetch(rewrite(damaged))  # the CRC is right: the codec must notice
    fault = _only_fault(recs, last=199)
    assert fault.reason == UNDECODABLE_BATCH and pos == 200


def test_truncated_zstd_frame_is_one_dead_letter() -> None:
    buf = build(VALUES, CODEC_ZSTD)
    recs, pos = fetch(rewrite(buf, records=bytes(buf[HEADER:-20])))
    assert _only_fault(recs, last=199).reason == UNDECODABLE_BATCH and pos == 200


def test_crc_mismatch_is_one_dead_letter_not_a_stuck_poll() -> None:
    buf = build(VALUES, CODEC_NONE, base=7)
    flipped = bytearray(buf)
    flipped[-30] ^= 0x01  # one bit of a value: without the CRC this would be a wrong value
    recs, pos = fetch(flipped, offset=7)
    fault = _only_fault(recs, last=206)
    assert len(recs) == 1 and "CRC mismatch" in fault.detail and pos == 207


def test_crc_mismatch_raised_by_stock_kafka_python() -> None:
    """What the guard replaces: kafka-python raises, and the position does not move."""
    uninstall_guarded_batches()
    flipped = build(VALUES)
    flipped[-30] ^= 0x01
    pr = Fetcher.PartitionRecords(0, TP, MemoryRecords(bytes(flipped)), check_crcs=True)
    with pytest.raises(Exception, match="crc"):
        pr.take(10)
    assert pr.next_fetch_offset == 0


def test_records_that_do_not_parse_after_good_ones() -> None:
    plain = build(VALUES[:5], base=10)
    section = bytes(plain[HEADER:])
    length, pos = decode_varint(section, 0)
    first = section[:pos + length]  # record 0 whole, then garbage
    buf = rewrite(plain, records=first + b"\x7f" * 40)
    recs, pos = fetch(buf, offset=10)
    assert [r.value for r in recs[:-1]] == VALUES[:1]
    fault = _only_fault(recs, last=14)
    assert "do not parse from record 1 of 5" in fault.detail and pos == 15


@pytest.mark.parametrize("codec", [CODEC_NONE, CODEC_ZSTD])
def test_a_header_key_that_is_not_utf8_costs_one_record(codec: int) -> None:
    """Brokers store header keys as sent; kafka-python's decode of one raised out of every
    poll. Now that record alone is a dead letter at its own offset and the batch goes on."""
    plain = build(VALUES[:5], base=30)  # odd records carry the header ("h", b"x")
    section = bytearray(plain[HEADER:])
    first = section.index(b"\x02h\x02x")  # record 1's header: key "h", value "x"
    section[first + 1] = 0xFF
    records = bytes(section)
    if codec == CODEC_ZSTD:
        records = zstandard.ZstdCompressor().compress(records)
    recs, pos = fetch(rewrite(plain, records=records, attrs=codec), offset=30)
    assert [r.offset for r in recs] == [30, 31, 32, 33, 34] and pos == 35
    assert [r.value for i, r in enumerate(recs) if i != 1] == [VALUES[i] for i in (0, 2, 3, 4)]
    fault = fault_of(recs[1].headers)
    assert fault is not None and fault.reason == UNDECODABLE_RECORD
    assert "record at offset 31 does not parse: UnicodeDecodeError" in fault.detail
    assert VALUES[1] in recs[1].value and recs[1].key is None
    assert not any(fault_of(r.headers) for i, r in enumerate(recs) if i != 1)


def test_bytes_left_after_the_last_record() -> None:
    plain = build(VALUES[:3])
    buf = rewrite(plain, records=bytes(plain[HEADER:]) + b"\x00" * 9)
    recs, pos = fetch(buf)
    assert [r.value for r in recs[:3]] == VALUES[:3]
    detail = _only_fault(recs, last=2).detail
    assert "after the last record" in detail and "9 unconsumed bytes" in detail and pos == 3


def test_fetch_from_the_middle_of_an_undecodable_batch_still_moves_past_it() -> None:
    bad = rewrite(build(VALUES[:10], base=0), attrs=6)
    recs, pos = fetch(bad, offset=4)
    assert _only_fault(recs, last=9).reason == UNDECODABLE_BATCH and pos == 10


def _bomb_section(codec: int, size: int) -> bytes:
    """A records section that claims one record and decompresses to ``size`` bytes."""
    zeros = bytes(size)
    if codec == CODEC_GZIP:
        return gzip.compress(zeros, 9)
    if codec == CODEC_SNAPPY:
        return snappy.compress(zeros)
    if codec == CODEC_LZ4:
        return lz4.frame.compress(zeros)
    return zstandard.ZstdCompressor().compress(zeros)


@pytest.mark.parametrize("codec", [CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD])
def test_a_bomb_over_the_bound_is_too_large(codec: int) -> None:
    section = _bomb_section(codec, 8 * BOUND)
    buf = rewrite(build([b"x"]), records=section, attrs=codec)
    recs, pos = fetch(buf)
    fault = _only_fault(recs, last=0)
    assert fault.reason == TOO_LARGE and f"more than {BOUND} bytes" in fault.detail
    assert recs[0].value == bytes(buf) and pos == 1


@pytest.mark.parametrize("codec", [CODEC_GZIP, CODEC_LZ4, CODEC_ZSTD, CODEC_SNAPPY])
def test_decompression_memory_is_bounded(codec: int) -> None:
    """64 MiB of zeros compressed: decompressing stops after the bound (plus one 1 MiB step),
    where kafka-python's own decoder builds the whole 64 MiB (and a copy)."""
    data = _bomb_section(codec, 64 * BOUND)
    tracemalloc.start()
    try:
        with pytest.raises(BatchTooLarge):
            batches.decompress(codec, data, 4 * BOUND)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * BOUND + 3 * BOUND, peak


def test_a_zstd_window_over_the_bound_is_refused_not_allocated() -> None:
    params = zstandard.ZstdCompressionParameters(window_log=27, enable_ldm=True,
                                                 write_content_size=False)
    cctx = zstandard.ZstdCompressor(compression_params=params)
    with cctx.stream_writer(out := _Sink()) as w:  # streamed: no content size in the frame
        w.write(bytes(BOUND))
    assert zstandard.get_frame_parameters(out.data).window_size == 1 << 27
    with pytest.raises(BatchTooLarge, match="window"):
        batches.decompress(CODEC_ZSTD, out.data, BOUND)
    with pytest.raises(BatchTooLarge, match="window"):  # as the second frame
        small = zstandard.ZstdCompressor().compress(b"x")
        batches.decompress(CODEC_ZSTD, small + out.data, BOUND)


class _Sink:
    def __init__(self) -> None:
        self.data = b""

    def write(self, b: bytes) -> int:
        self.data += bytes(b)
        return len(b)

    def flush(self) -> None:
        pass


def test_the_marker_cannot_be_forged_by_a_producer() -> None:
    # a producer can set any header, but not this process's random token
    forged = build([b"v"], keys=[None])
    recs, _ = fetch(forged)
    assert fault_of([("armlab.undecodable", b'{"reason":"too_large","detail":"x"}')]) is None
    assert fault_of(recs[0].headers) is None
    assert batches.MARKER.startswith("armlab.undecodable.") and len(batches.MARKER) > 40


def test_install_refuses_a_tiny_bound_and_is_idempotent() -> None:
    with pytest.raises(ValueError):
        install_guarded_batches(10)
    install_guarded_batches(2 * BOUND)
    install_guarded_batches(BOUND)
    assert batches.GuardedRecordBatch.max_bytes == BOUND


def test_gzip_with_zero_padding_decodes() -> None:
    plain = bytes(build(VALUES)[HEADER:])
    buf = rewrite(build(VALUES), records=gzip.compress(plain) + b"\x00" * 8, attrs=CODEC_GZIP)
    recs, _ = fetch(buf)
    assert [r.value for r in recs] == VALUES
    assert zlib  # (zlib is what _gunzip uses; imported for the reader's reference)
