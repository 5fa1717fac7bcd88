"""The journal: raw records from the proxy's hooks to the pipeline process, in order, on disk.

Every record the hooks keep goes through an append-only journal of segment files under
`data_dir/journal/`. The proxy's side (`JournalWriter`) only appends a reference to a bounded
in-memory buffer; a writer thread encodes and appends, off the event loop. The pipeline
process (`JournalReader`) tails the segments in order and checkpoints its position after its
outbox commits (never before them), so a record is either committed or read again after a
crash (event ids derive from the change: a record read twice makes the same ids, which the
outbox ignores).

Bounds: past `memory_records` / `memory_bytes` waiting for the writer thread, or past
`max_bytes` of unconsumed journal on disk, a record is dropped, counted
(`records_dropped_total{reason}`) and logged. Nothing else is ever dropped for lack of room.

Record framing: `<u32 length><u32 crc32><payload>`. HTTP payloads: `<u8 kind><u32 header
length>`, a JSON header of the record's scalar fields, then each body as `<i64 length or
-1><bytes>`. Websocket frames, the bulk of the records, have a fixed binary header instead
(`<u8 kind><f64 ts><u8 flags><u8 flow id length><flow id><content>`): a third of the
encoding time, which the proxy's process pays for every frame it keeps.
A torn tail (a killed writer) fails its length or CRC and is skipped once a later segment
exists (the writer never appends to a segment after starting the next one).
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import structlog

from whazing_gateway.ops.files import private_dir

from whazing_gateway.edge.records import HttpExchange, HttpRequestSeen, Record, WsFrame
from whazing_gateway.ops import metrics

log = structlog.get_logger(__name__)

SUFFIX = ".jnl"
CHECKPOINT = "checkpoint.json"
SEGMENT_BYTES = 16 << 20
# The writer thread gathers records this long after the first one arrives, then writes them in
# one go. Each wake-up takes the GIL from the event loop; at 400 requests/s, 5 ms cost the
# writer thread 17-19 CPU ticks per 5 s and 50 ms cost 6-8 (about 2% of the proxy's CPU). A
# record reaches the pipeline at most this much later, and a kill -9 of the proxy loses at most
# this much of the newest records (catch-up reads missed ticket changes back at the next start).
WRITE_DELAY_S = 0.05
_FRAME = struct.Struct("<II")
_HEAD = struct.Struct("<BI")
_BLOB = struct.Struct("<q")
_WS = struct.Struct("<BdBB")
_REQUEST, _EXCHANGE, _FRAME_KIND, _WS_KIND = 1, 2, 3, 4  # 3: frames with a JSON header (older journals; still read)
_FROM_CLIENT, _IS_TEXT = 1, 2


# -- codec ---------------------------------------------------------------------------------------
def encode(record: Record) -> bytes:
    head: list
    blobs: list[bytes | None]
    if isinstance(record, WsFrame):
        flow_id = record.flow_id.encode()
        if len(flow_id) < 256:
            flags = (_FROM_CLIENT if record.from_client else 0) | (_IS_TEXT if record.is_text else 0)
            payload = b"".join((_WS.pack(_WS_KIND, record.ts, flags, len(flow_id)), flow_id, record.content))
            return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        kind, head, blobs = _FRAME_KIND, [record.flow_id, record.ts, record.from_client, record.is_text], [record.content]
    elif isinstance(record, HttpExchange):
        kind = _EXCHANGE
        head = [record.flow_id, record.ts, record.method, record.path, record.query, record.status,
                record.req_headers, record.resp_headers]
        blobs = [record.req_body, record.resp_body]
    else:
        kind = _REQUEST
        head = [record.flow_id, record.ts, record.method, record.path, record.query, record.headers]
        blobs = [record.body]
    h = json.dumps(head, separators=(",", ":")).encode()
    parts = [_HEAD.pack(kind, len(h)), h]
    for blob in blobs:
        if blob is None:
            parts.append(_BLOB.pack(-1))
        else:
            parts += [_BLOB.pack(len(blob)), blob]
    payload = b"".join(parts)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode(payload: bytes) -> Record:
    if payload[0] == _WS_KIND:
        _, ts, flags, id_len = _WS.unpack_from(payload, 0)
        start = _WS.size + id_len
        return WsFrame(payload[_WS.size:start].decode(), ts, bool(flags & _FROM_CLIENT), payload[start:],
                       bool(flags & _IS_TEXT))
    kind, hlen = _HEAD.unpack_from(payload, 0)
    pos = _HEAD.size
    head = json.loads(payload[pos:pos + hlen])
    pos += hlen
    blobs: list[bytes | None] = []
    while pos < len(payload):
        (n,) = _BLOB.unpack_from(payload, pos)
        pos += _BLOB.size
        if n < 0:
            blobs.append(None)
        else:
            blobs.append(payload[pos:pos + n])
            pos += n
    if kind == _FRAME_KIND:
        flow_id, ts, from_client, is_text = head
        return WsFrame(flow_id, ts, from_client, blobs[0] or b"", is_text)
    if kind == _EXCHANGE:
        flow_id, ts, method, path, query, status, req_headers, resp_headers = head
        return HttpExchange(flow_id, ts, method, path, query, status, req_headers, blobs[0], resp_headers, blobs[1])
    if kind == _REQUEST:
        flow_id, ts, method, path, query, headers = head
        return HttpRequestSeen(flow_id, ts, method, path, query, headers, blobs[0])
    raise ValueError(f"unknown record kind {kind}")


def _size(record: Record) -> int:
    if isinstance(record, WsFrame):
        return len(record.content) + 64
    if isinstance(record, HttpExchange):
        return len(record.req_body or b"") + len(record.resp_body or b"") + 256
    return len(record.body or b"") + 256


def segments(directory: Path) -> list[int]:
    out = []
    for name in os.listdir(directory):
        if name.endswith(SUFFIX) and name[: -len(SUFFIX)].isdigit():
            out.append(int(name[: -len(SUFFIX)]))
    return sorted(out)


def segment_path(directory: Path, seq: int) -> Path:
    return directory / f"{seq:012d}{SUFFIX}"


def open_dir(directory: Path) -> Path:
    """The journal's folder, private like every data folder (raw traffic: customers' messages)."""
    return private_dir(directory)


# -- the proxy's side ----------------------------------------------------------------------------
class JournalWriter:
    """`submit()` from the hooks (never blocks, never raises); a thread does the writing."""

    def __init__(self, directory: Path, *, max_bytes: int = 1 << 30, segment_bytes: int = SEGMENT_BYTES,
                 memory_records: int = 50_000, memory_bytes: int = 256 << 20) -> None:
        self.directory = open_dir(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.memory_records = memory_records
        self.memory_bytes = memory_bytes
        self._buffer: deque[Record] = deque()
        self._in_bytes = 0  # written by the loop thread only
        self._out_bytes = 0  # written by the writer thread only
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self._seq = 0
        self._seg_size = 0
        self._sizes: dict[int, int] = {}  # live segments -> bytes, as far as the writer knows
        self._last_drop_log: dict[str, float] = {}
        self.written = 0
        self.dropped = 0

    # the hot path ------------------------------------------------------------------------------
    def submit(self, record: Record) -> None:
        size = _size(record)
        if (len(self._buffer) >= self.memory_records
                or self._in_bytes - self._out_bytes + size > self.memory_bytes):
            self._drop("memory", "the journal writer is behind: record DROPPED", buffered=len(self._buffer))
            return
        self._in_bytes += size
        was_empty = not self._buffer
        self._buffer.append(record)
        if was_empty:  # the writer drains all it finds: wake it once per batch, not per record
            self._wake.set()

    # lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        existing = segments(self.directory)
        for seq in existing:
            try:
                self._sizes[seq] = segment_path(self.directory, seq).stat().st_size
            except FileNotFoundError:
                pass
        # A new segment per start: whatever a killed writer left half-written stays behind it.
        self._open_segment((existing[-1] + 1) if existing else 1)
        self._thread = threading.Thread(target=self._run, name="whazing-journal", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is buffered (bounded by a timeout), then close. Blocking: call in a thread."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # the writer thread --------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            if not self._stopping:
                # gather a batch: one GIL hand-over and one write per few ms, not per record
                time.sleep(WRITE_DELAY_S)
            try:
                self._drain()
            except Exception as exc:  # a full disk, a removed folder: count, log, keep going
                metrics.STAGE_ERRORS.labels("journal").inc()
                self._log_throttled("journal_error", "journal write failed", error=repr(exc))
                time.sleep(0.1)
            if self._stopping and not self._buffer:
                return

    def _drain(self) -> None:
        chunk: list[bytes] = []
        chunk_bytes = 0
        buffer = self._buffer
        while buffer:
            record = buffer.popleft()
            self._out_bytes += _size(record)
            data = encode(record)
            if not self._room_for(chunk_bytes + len(data)):
                self._drop("journal", "the journal is full (proxy.journal_max_bytes): record DROPPED",
                           journal_bytes=sum(self._sizes.values()))
                continue
            chunk.append(data)
            chunk_bytes += len(data)
            if chunk_bytes >= 1 << 20 or self._seg_size + chunk_bytes >= self.segment_bytes:
                self._write(chunk, chunk_bytes)
                chunk, chunk_bytes = [], 0
        if chunk:
            self._write(chunk, chunk_bytes)

    def _room_for(self, pending: int) -> bool:
        if sum(self._sizes.values()) + pending <= self.max_bytes:
            return True
        # The pipeline process deletes the segments it has consumed: look again.
        for seq in list(self._sizes):
            if seq != self._seq and not segment_path(self.directory, seq).exists():
                del self._sizes[seq]
        return sum(self._sizes.values()) + pending <= self.max_bytes

    def _write(self, chunk: list[bytes], size: int) -> None:
        assert self._fd is not None
        data = b"".join(chunk)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._seg_size += size
        self._sizes[self._seq] = self._seg_size
        self.written += len(chunk)
        if self._seg_size >= self.segment_bytes:
            self._open_segment(self._seq + 1)

    def _open_segment(self, seq: int) -> None:
        fd = os.open(segment_path(self.directory, seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._seq, self._seg_size = fd, seq, 0
        self._sizes[seq] = 0

    def _drop(self, reason: str, message: str, **context) -> None:
        self.dropped += 1
        metrics.RECORDS_DROPPED.labels(reason).inc()
        metrics.OBSERVATIONS_DROPPED.inc()
        self._log_throttled(f"dropped_{reason}", message, dropped_total=self.dropped, **context)

    def _log_throttled(self, kind: str, message: str, **context) -> None:
        now = time.monotonic()
        if now - self._last_drop_log.get(kind, -1e9) >= 10.0:
            self._last_drop_log[kind] = now
            log.error(message, kind=kind, **context)


# -- the pipeline process's side -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Position:
    seq: int
    offset: int


class JournalReader:
    """Reads records in order from the checkpoint on; `commit()` moves the checkpoint."""

    def __init__(self, directory: Path) -> None:
        self.directory = open_dir(directory)
        self.position = self._load_checkpoint()
        self._file: BinaryIO | None = None
        self._buf = b""
        self._off = 0  # records before this offset of _buf are read
        self._buf_pos = self.position  # file position of _buf[_off]
        self.corrupt = 0
        self._probes = 0

    def _load_checkpoint(self) -> Position:
        try:
            data = json.loads((self.directory / CHECKPOINT).read_text())
            return Position(int(data["seq"]), int(data["offset"]))
        except (OSError, ValueError, KeyError, TypeError):
            existing = segments(self.directory)
            return Position(existing[0] if existing else 1, 0)

    def _open(self) -> bool:
        pos = self._buf_pos
        try:
            f = open(segment_path(self.directory, pos.seq), "rb")
        except FileNotFoundError:
            later = [s for s in segments(self.directory) if s > pos.seq]
            if later:  # consumed and removed, or never written (a restart): go on
                self._buf_pos = Position(later[0], 0)
            return False
        f.seek(pos.offset)
        self._file = f
        return True

    def read(self, max_records: int, max_bytes: int = 8 << 20) -> list[tuple[Record, Position]]:
        """Up to `max_records` complete records after the read position (not the checkpoint)."""
        out: list[tuple[Record, Position]] = []
        if self._file is None and not self._open():
            return out
        taken = 0
        while len(out) < max_records and taken < max_bytes:
            avail = len(self._buf) - self._off
            if avail < _FRAME.size or avail < _FRAME.size + _FRAME.unpack_from(self._buf, self._off)[0]:
                if self._fill():
                    continue
                if self._next_segment_exists():
                    if self._fill(everything=True):  # the writer finished this one: to its end
                        continue
                    if avail:  # a torn tail left by a killed writer
                        self.corrupt += 1
                        log.warning("journal: torn record at the end of a segment skipped",
                                    seq=self._buf_pos.seq, bytes=avail)
                    self._advance_segment()
                    if self._file is None and not self._open():
                        break
                    continue
                break
            length, crc = _FRAME.unpack_from(self._buf, self._off)
            start = self._off + _FRAME.size
            payload = self._buf[start:start + length]
            consumed = _FRAME.size + length
            self._off += consumed
            self._buf_pos = Position(self._buf_pos.seq, self._buf_pos.offset + consumed)
            taken += consumed
            if zlib.crc32(payload) != crc:
                self.corrupt += 1
                metrics.STAGE_ERRORS.labels("journal").inc()
                log.error("journal: corrupt record skipped", seq=self._buf_pos.seq)
                continue
            try:
                record = decode(payload)
            except Exception as exc:
                self.corrupt += 1
                metrics.STAGE_ERRORS.labels("journal").inc()
                log.error("journal: undecodable record skipped", error=repr(exc), seq=self._buf_pos.seq)
                continue
            out.append((record, self._buf_pos))
        return out

    def _fill(self, everything: bool = False) -> bool:
        """Read more of the segment into the buffer; False at its (current) end."""
        assert self._file is not None
        more = self._file.read() if everything else self._file.read(max(1 << 20, self._need()))
        if not more:
            return False
        self._buf = self._buf[self._off:] + more
        self._off = 0
        return True

    def _need(self) -> int:
        avail = len(self._buf) - self._off
        if avail >= _FRAME.size:
            return _FRAME.size + _FRAME.unpack_from(self._buf, self._off)[0] - avail
        return _FRAME.size

    def _next_segment_exists(self) -> bool:
        """The writer numbers segments in sequence; a full listing (gaps) only now and then."""
        if segment_path(self.directory, self._buf_pos.seq + 1).exists():
            return True
        self._probes += 1
        return self._probes % 50 == 0 and any(s > self._buf_pos.seq for s in segments(self.directory))

    def _advance_segment(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        later = [s for s in segments(self.directory) if s > self._buf_pos.seq]
        self._buf, self._off = b"", 0
        self._buf_pos = Position(later[0] if later else self._buf_pos.seq + 1, 0)

    def commit(self, position: Position) -> None:
        """After the outbox commit: the records up to `position` are never read again."""
        tmp = self.directory / (CHECKPOINT + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps({"seq": position.seq, "offset": position.offset}).encode())
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / CHECKPOINT)
        old_seq = self.position.seq
        self.position = position
        if position.seq != old_seq:
            for seq in segments(self.directory):
                if seq < position.seq:
                    try:
                        segment_path(self.directory, seq).unlink()
                    except FileNotFoundError:
                        pass

    def rewind(self) -> None:
        """Read again from the checkpoint (a batch was not committed)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._buf, self._off = b"", 0
        self._buf_pos = self.position

    def backlog_bytes(self) -> int:
        total = 0
        for seq in segments(self.directory):
            if seq >= self.position.seq:
                try:
                    total += segment_path(self.directory, seq).stat().st_size
                except FileNotFoundError:
                    continue
                if seq == self.position.seq:
                    total -= self.position.offset
        return max(total, 0)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
