"""Record batches the consumer cannot decode become one dead letter, never a stuck consumer.

kafka-python decodes a fetched v2 record batch inside ``poll()``: it checks the batch CRC
(``check_crcs``), decompresses the whole batch (``DefaultRecordBatch._maybe_uncompress``) and
parses its records (``__next__``). Any failure there (a codec whose library is missing, an
unknown codec id, corrupt compressed data, a CRC mismatch, records that do not parse) is raised
out of ``poll()`` with no partition or offset, before the position moves, so the next poll
fails at the same offset again, forever; and decompression is unbounded, so a small gzip
"bomb" can take hundreds of megabytes.

:func:`install_guarded_batches` makes kafka-python build :class:`GuardedRecordBatch` (a
subclass of its ``DefaultRecordBatch``) for every fetched v2 batch of this process. It

* decompresses gzip, snappy (raw and xerial-framed), lz4 (frame) and zstd incrementally and
  stops at ``max_batch_bytes`` of output, so one batch costs at most that much memory;
* on any failure (unknown codec, corrupt data, over the bound, CRC mismatch) replaces the
  batch's content by ONE synthetic record at the batch's last offset
  (``base_offset + last_offset_delta``), so the fetch position moves past the whole batch.
  Its value is the batch as fetched (for the dead letter) and its one header is
  :data:`MARKER` (a name with a random per-process token, so no producer can forge it) with a
  JSON ``{"reason", "detail"}``: :func:`fault_of` reads it back, and the Kafka source turns
  the record into a dead letter (reason ``undecodable_batch`` or ``too_large``);
* hands a record that does not parse (a header key that is not UTF-8, which brokers store as
  sent) out as such a synthetic record at its own offset (reason ``undecodable_record``, the
  record's bytes as the value), and goes on with the next record; when even the record's
  length or offset cannot be read, the rest of the batch becomes one ``undecodable_batch``
  record at the batch's last offset.

Batches that decode are handed out exactly as kafka-python would. Not guarded: control
batches (written by the broker's transaction coordinator, never by a producer: one that fails
its CRC still raises, since skipping an abort marker could drop committed records), legacy
v0/v1 message sets (Kafka 4 brokers neither accept nor serve them), and a batch whose
header or framing is itself corrupt (kafka-python cannot find the batch's offsets then).

This relies on kafka-python internals (``_buffer``, ``_pos``, ``_num_records``,
``_next_record_index``, ``_decompressed``, ``_read_msg``): :func:`install_guarded_batches`
checks they are there, and pyproject.toml pins kafka-python to the tested release line.
"""

from __future__ import annotations

import json
import secrets
import struct
import threading
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

import lz4.frame
import snappy
import zstandard
from kafka.record import memory_records
from kafka.record.default_records import DefaultRecord, DefaultRecordBatch
from kafka.record.util import decode_varint, encode_varint

#: Reasons of the dead letters made here (``armlab.core.events.DecodeFailure.reason``).
UNDECODABLE_BATCH = "undecodable_batch"
UNDECODABLE_RECORD = "undecodable_record"
TOO_LARGE = "too_large"

#: Default bound on one batch's decompressed size (``ARMLAB_INGEST_MAX_BATCH_BYTES``).
DEFAULT_MAX_BATCH_BYTES = 32 * 1024 * 1024

#: The header name that marks a synthetic record: unguessable, new in every process.
MARKER = f"armlab.undecodable.{secrets.token_hex(16)}"

CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD = 0, 1, 2, 3, 4
CODEC_NAMES = {CODEC_NONE: "none", CODEC_GZIP: "gzip", CODEC_SNAPPY: "snappy",
               CODEC_LZ4: "lz4", CODEC_ZSTD: "zstd"}

#: Output taken from a decompressor per step: the bound is overshot by at most this much.
_CHUNK = 1024 * 1024
_XERIAL_MAGIC = b"\x82SNAPPY\x00"


class BatchTooLarge(Exception):  # noqa: N818 - a condition, not an error of ours
    """The batch decompresses to more than the bound."""


@dataclass(frozen=True, slots=True)
class BatchFault:
    """Why a batch was replaced by a synthetic record (read back by :func:`fault_of`)."""

    reason: str
    detail: str


def codec_name(codec: int) -> str:
    return CODEC_NAMES.get(codec, f"unknown codec id {codec}")


# -- bounded decompression ------------------------------------------------------------------
def _over(limit: int) -> BatchTooLarge:
    return BatchTooLarge(f"decompresses to more than {limit} bytes "
                         "(ARMLAB_INGEST_MAX_BATCH_BYTES)")


def _gunzip(data: bytes, limit: int) -> bytearray:
    """gzip members one after another (what ``gzip.GzipFile`` reads), zero padding allowed."""
    out = bytearray()
    rest = data
    while True:
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        pending = rest
        while not d.eof:
            chunk = d.decompress(pending, min(_CHUNK, limit - len(out) + 1))
            out += chunk
            if len(out) > limit:
                raise _over(limit)
            pending = d.unconsumed_tail
            if not chunk and not pending:
                raise ValueError("gzip: truncated stream")
        rest = d.unused_data
        if not rest.strip(b"\x00"):
            return out


def _snappy_raw_length(block: bytes) -> int:
    """The uncompressed length a raw snappy block declares (a little-endian varint)."""
    n = shift = 0
    for i, byte in enumerate(block[:5]):
        n |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return n
        shift += 7
        if i == 4:
            break
    raise ValueError("snappy: bad length header")


def _unsnappy(data: bytes, limit: int) -> bytearray:
    """Raw snappy (librdkafka) or the xerial block framing (Java's snappy-java): each raw
    block declares its uncompressed length, checked against the bound before it is
    decompressed."""
    if data[:8] == _XERIAL_MAGIC and len(data) >= 16:
        blocks = []
        pos = 16
        while pos < len(data):
            if pos + 4 > len(data):
                raise ValueError("snappy: truncated xerial block header")
            (size,) = struct.unpack_from(">i", data, pos)
            if size < 0 or pos + 4 + size > len(data):
                raise ValueError("snappy: truncated xerial block")
            blocks.append(data[pos + 4:pos + 4 + size])
            pos += 4 + size
    else:
        blocks = [data]
    total = 0
    for b in blocks:
        total += _snappy_raw_length(b)
        if total > limit:
            raise _over(limit)
    out = bytearray()
    for b in blocks:
        out += snappy.decompress(b)
    return out


def _unlz4(data: bytes, limit: int) -> bytearray:
    """LZ4 frames (Kafka's format since message format v1), one after another."""
    out = bytearray()
    rest = data
    while rest:
        d = lz4.frame.LZ4FrameDecompressor()
        chunk = d.decompress(rest, max_length=min(_CHUNK, limit - len(out) + 1))
        while True:
            out += chunk
            if len(out) > limit:
                raise _over(limit)
            if d.eof:
                break
            if d.needs_input:
                raise ValueError("lz4: truncated frame")
            chunk = d.decompress(b"", max_length=min(_CHUNK, limit - len(out) + 1))
        rest = d.unused_data or b""
    return out


#: The largest zstd window always accepted: what levels 1-19 use (window log 23 at most).
_ZSTD_MIN_WINDOW = 8 * 1024 * 1024


def _window_limit(limit: int) -> int:
    """The largest zstd window (history buffer, allocated up front) a frame may ask for: the
    bound, rounded up to a power of two, or 8 MiB when that is more. A frame asking for more
    (up to 2 GiB is legal) is refused as too large instead of allocated."""
    size = _ZSTD_MIN_WINDOW
    while size < limit and size < 1 << 31:
        size <<= 1
    return size


def _unzstd(data: bytes, limit: int) -> bytearray:
    """zstd frames (one after another), read through a stream reader in bounded steps."""
    window = _window_limit(limit)
    try:
        asked = zstandard.get_frame_parameters(data).window_size
    except zstandard.ZstdError:
        asked = 0  # not a zstd frame: the reader below says why
    if asked > window:
        raise BatchTooLarge(f"zstd frame asks for a {asked}-byte window, more than {window}")
    dctx = zstandard.ZstdDecompressor(max_window_size=window)
    out = bytearray()
    try:
        with dctx.stream_reader(data, read_across_frames=True) as reader:
            while True:
                chunk = reader.read(min(_CHUNK, limit - len(out) + 1))
                if not chunk:
                    break
                out += chunk
                if len(out) > limit:
                    raise _over(limit)
    except zstandard.ZstdError as exc:
        if "too much memory" in str(exc):  # a later frame's window
            raise BatchTooLarge(f"zstd frame asks for a window over {window} bytes") from exc
        raise
    # (A truncated last frame ends the stream without an error: the records then do not
    # parse, which GuardedRecordBatch.__next__ turns into a dead letter as well.)
    return out


_DECOMPRESSORS = {CODEC_GZIP: _gunzip, CODEC_SNAPPY: _unsnappy, CODEC_LZ4: _unlz4,
                  CODEC_ZSTD: _unzstd}


def decompress(codec: int, data: bytes, limit: int) -> bytearray:
    """``data`` (a batch's records section) decompressed with ``codec``; raises
    :class:`BatchTooLarge` past ``limit`` bytes of output, ValueError for an unknown codec,
    and the codec library's own error for corrupt data."""
    fn = _DECOMPRESSORS.get(codec)
    if fn is None:
        raise ValueError(f"no decoder for {codec_name(codec)}")
    return fn(data, limit)


# -- the synthetic record ------------------------------------------------------------------
def _synthetic_record(offset_delta: int, value: bytes, fault: BatchFault) -> bytearray:
    """One v2 record (the ``DefaultRecord`` wire form) with no key, ``value`` and the marker
    header carrying ``fault`` as JSON."""
    body = bytearray()
    w = body.append
    encode_varint(0, w)  # attributes
    encode_varint(0, w)  # timestamp delta
    encode_varint(offset_delta, w)
    encode_varint(-1, w)  # null key
    encode_varint(len(value), w)
    body += value
    encode_varint(1, w)  # one header
    name = MARKER.encode()
    encode_varint(len(name), w)
    body += name
    payload = json.dumps({"reason": fault.reason, "detail": fault.detail}).encode()
    encode_varint(len(payload), w)
    body += payload
    out = bytearray()
    encode_varint(len(body), out.append)
    out += body
    return out


def fault_of(headers: Any) -> BatchFault | None:
    """The :class:`BatchFault` of a synthetic record (its headers), else None."""
    if not headers:
        return None
    for name, value in headers:
        if name == MARKER and value is not None:
            try:
                data = json.loads(value)
                return BatchFault(str(data["reason"]), str(data["detail"]))
            except (ValueError, KeyError, TypeError):
                return BatchFault(UNDECODABLE_BATCH, "unreadable fault header")
    return None


class GuardedRecordBatch(DefaultRecordBatch):
    """kafka-python's v2 batch with bounded decompression and faults turned into one
    synthetic record (module doc). ``max_bytes`` is the bound (set by
    :func:`install_guarded_batches`)."""

    max_bytes: ClassVar[int] = DEFAULT_MAX_BATCH_BYTES

    def _where(self) -> str:
        return (f"{codec_name(self.compression_type)} batch, offsets {self.base_offset}-"
                f"{self.last_offset}, {self.records_count} records, "
                f"{self.size_in_bytes} bytes")

    def _replace(self, reason: str, detail: str, value: bytes) -> None:
        """Make the rest of this batch one synthetic record at its last offset."""
        fault = BatchFault(reason, f"{detail} ({self._where()})")
        self._buffer = _synthetic_record(self.last_offset_delta, value, fault)
        self._pos = 0
        self._num_records = self._next_record_index + 1
        self._decompressed = True

    def validate_crc(self) -> bool:
        """Checked by kafka-python (``check_crcs``) before anything else: a mismatch makes the
        batch one dead letter instead of an error raised from every poll. (Control batches
        keep kafka-python's behaviour: module doc.)"""
        ok = bool(super().validate_crc())
        if ok or self.is_control_batch:
            return ok
        self._replace(UNDECODABLE_BATCH, f"CRC mismatch (stored {self.crc:#010x})",
                      bytes(self._buffer))
        return True

    def _maybe_uncompress(self) -> None:
        if self._decompressed:
            return
        codec = self.compression_type
        if codec != CODEC_NONE and not self.is_control_batch:
            raw = self._buffer
            try:
                out = decompress(codec, bytes(memoryview(raw)[self._pos:]), self.max_bytes)
            except BatchTooLarge as exc:
                self._replace(TOO_LARGE, str(exc), bytes(raw))
                return
            except Exception as exc:  # noqa: BLE001 - any codec failure: one dead letter
                self._replace(UNDECODABLE_BATCH, f"{type(exc).__name__}: {exc}"[:500],
                              bytes(raw))
                return
            self._buffer = out
            self._pos = 0
            self._decompressed = True
            return
        super()._maybe_uncompress()

    def __next__(self) -> Any:
        try:
            return DefaultRecordBatch.__next__(self)
        except StopIteration:
            raise
        except Exception as exc:
            # A record that does not parse, or bytes left after the last one (kafka-python
            # raises CorruptRecordError with the position unchanged). Control batches keep
            # kafka-python's behaviour.
            if self.is_control_batch or not self._decompressed:
                raise
            cause = exc.__context__ or exc  # kafka-python wraps the parse error
            error = f"{type(cause).__name__}: {cause}"[:400]
            if self._next_record_index < self._num_records:
                record = self._skip_record(error)
                if record is not None:
                    return record
                where = f"record {self._next_record_index} of {self._num_records}"
            else:
                where = "after the last record"
            self._replace(UNDECODABLE_BATCH, f"records do not parse from {where}: {error}",
                          bytes(memoryview(self._buffer)[self._pos:]))
        # The synthetic record always parses, and it is the last one: no second replacement.
        return DefaultRecordBatch.__next__(self)

    def _skip_record(self, error: str) -> DefaultRecord | None:
        """The record at the current position as a synthetic record at its own offset (its
        raw bytes as the value, reason ``undecodable_record``), the position moved past it;
        None when its framing (length, offset) cannot be read either."""
        buf, pos = self._buffer, self._pos
        try:
            length, body = decode_varint(buf, pos)
            end = body + length
            _, p = decode_varint(buf, body)  # attributes
            ts_delta, p = decode_varint(buf, p)
            offset_delta, p = decode_varint(buf, p)
        except (ValueError, IndexError):
            return None
        if length <= 0 or end > len(buf) or p > end \
                or not 0 <= offset_delta <= self.last_offset_delta:
            return None
        offset = self.base_offset + offset_delta
        fault = BatchFault(UNDECODABLE_RECORD, f"record at offset {offset} does not parse: "
                           f"{error} ({self._where()})")
        payload = json.dumps({"reason": fault.reason, "detail": fault.detail}).encode()
        timestamp = (self.max_timestamp if self.timestamp_type == self.LOG_APPEND_TIME
                     else self.first_timestamp + ts_delta)
        self._pos = end
        self._next_record_index += 1
        return DefaultRecord(length, offset, timestamp, self.timestamp_type, None,
                             bytes(buf[pos:end]), [(MARKER, payload)])

    next = __next__


_installed = threading.Lock()
_REQUIRED = ("_buffer", "_pos", "_num_records", "_next_record_index", "_decompressed")


def install_guarded_batches(max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES) -> None:
    """Make kafka-python build :class:`GuardedRecordBatch` for every fetched v2 batch of this
    process, bounded to ``max_batch_bytes`` decompressed (idempotent; the last bound wins)."""
    if max_batch_bytes < 1024:
        raise ValueError("max_batch_bytes must be at least 1024")
    missing = [s for s in _REQUIRED if s not in DefaultRecordBatch.__slots__]
    if missing or not hasattr(DefaultRecordBatch, "_read_msg"):
        raise RuntimeError(f"kafka-python's DefaultRecordBatch changed (missing {missing}); "
                           "armlab.adapters.kafka.batches supports kafka-python 3.0.x")
    with _installed:
        GuardedRecordBatch.max_bytes = max_batch_bytes
        memory_records.DefaultRecordBatch = GuardedRecordBatch


def uninstall_guarded_batches() -> None:
    """Give kafka-python its own batch class back (tests)."""
    with _installed:
        memory_records.DefaultRecordBatch = DefaultRecordBatch
