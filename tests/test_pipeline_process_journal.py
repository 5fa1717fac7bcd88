"""The journal between the proxy and the pipeline process: order, checkpoints, torn tails and
bounds, on real files (a real writer thread, a real reader)."""

from __future__ import annotations

import time

from whazing_gateway.edge.records import HttpExchange, HttpRequestSeen, WsFrame
from whazing_gateway.ops import metrics
from whazing_gateway.pipeline.journal import JournalReader, JournalWriter, decode, encode, segments


def frames(n: int, start: int = 0, size: int = 40) -> list[WsFrame]:
    return [WsFrame(f"f{i}", 1000.0 + i, False, (b"42[%d]" % i).ljust(size, b" ")) for i in range(start, start + n)]


def wait_written(writer: JournalWriter, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while writer.written + writer.dropped < n:
        assert time.monotonic() < deadline, (writer.written, writer.dropped)
        time.sleep(0.01)


def read_all(reader: JournalReader) -> list:
    out = []
    while True:
        items = reader.read(64)
        if not items:
            return out
        out.extend(items)


def test_codec_round_trips_every_record_kind():
    records = [
        WsFrame("a", 1.5, True, b"\x00\xff binary", False),
        WsFrame("0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0", 1700000000.123456, False, b'42["1:ticketList",{}]'),
        WsFrame("", 0.0, False, b""),
        WsFrame("x" * 300, 4.0, True, b"a flow id too long for the binary header"),
        HttpRequestSeen("b", 2.0, "POST", "/tickets", "x=1", {"content-type": "application/json"}, None),
        HttpExchange("c", 3.0, "PUT", "/tickets/1", "", 200, {"authorization": "Bearer t"}, b"{}",
                     {"content-encoding": "gzip"}, b"\x1f\x8b body"),
    ]
    assert [decode(encode(r)[8:]) for r in records] == records


def test_frames_journaled_with_a_json_header_are_still_read():
    """An upgrade finds records the previous version wrote (kind 3, JSON header) in the journal."""
    import json
    import struct

    head = json.dumps(["f1", 12.5, False, True]).encode()
    payload = struct.pack("<BI", 3, len(head)) + head + struct.pack("<q", 6) + b"42[1,]"
    assert decode(payload) == WsFrame("f1", 12.5, False, b"42[1,]", True)
    assert len(encode(WsFrame("f1", 12.5, False, b"42[1,]", True))) < 8 + len(payload)  # the binary header is used


def test_records_come_back_in_order_across_segments_and_restarts(tmp_path):
    writer = JournalWriter(tmp_path, segment_bytes=4096)
    writer.start()
    for f in frames(300):
        writer.submit(f)
    wait_written(writer, 300)
    writer.stop()
    assert len(segments(tmp_path)) > 3
    reader = JournalReader(tmp_path)
    first = reader.read(100)
    assert [r.flow_id for r, _ in first] == [f"f{i}" for i in range(100)]
    reader.commit(first[-1][1])  # committed up to f99; the rest is read but not committed
    reader.read(50)
    reader.close()
    # a new writer (the gateway restarted) appends after what is there; a new reader resumes
    writer = JournalWriter(tmp_path, segment_bytes=4096)
    writer.start()
    for f in frames(10, start=300):
        writer.submit(f)
    wait_written(writer, 10)
    writer.stop()
    again = JournalReader(tmp_path)
    rest = read_all(again)
    assert [r.flow_id for r, _ in rest] == [f"f{i}" for i in range(100, 310)]
    again.commit(rest[-1][1])
    assert segments(tmp_path)[0] == rest[-1][1].seq  # consumed segments are deleted
    assert again.backlog_bytes() == 0


def test_a_torn_tail_is_skipped_once_the_writer_moved_on(tmp_path):
    writer = JournalWriter(tmp_path)
    writer.start()
    for f in frames(5):
        writer.submit(f)
    wait_written(writer, 5)
    writer.stop()
    [seq] = segments(tmp_path)
    with open(tmp_path / f"{seq:012d}.jnl", "ab") as f:
        f.write(encode(frames(1, start=99)[0])[:-7])  # killed mid-write
    reader = JournalReader(tmp_path)
    assert len(read_all(reader)) == 5  # the torn record is not read while it may still complete
    writer = JournalWriter(tmp_path)
    writer.start()
    writer.submit(frames(1, start=6)[0])
    wait_written(writer, 1)
    writer.stop()
    assert [r.flow_id for r, _ in read_all(reader)] == ["f6"]
    assert reader.corrupt == 1


def test_past_its_disk_bound_the_journal_drops_and_counts(tmp_path):
    dropped0 = metrics.RECORDS_DROPPED.labels("journal")._value.get()
    writer = JournalWriter(tmp_path, max_bytes=20_000, segment_bytes=4096)
    writer.start()
    for f in frames(1000, size=100):
        writer.submit(f)
    wait_written(writer, 1000)
    writer.stop()
    kept = read_all(JournalReader(tmp_path))
    assert 0 < len(kept) < 1000 and writer.dropped == 1000 - len(kept)
    assert metrics.RECORDS_DROPPED.labels("journal")._value.get() == dropped0 + writer.dropped
    # what was kept is the oldest, in order: drops only ever cut the newest
    assert [r.flow_id for r, _ in kept] == [f"f{i}" for i in range(len(kept))]


def test_past_its_memory_bound_the_buffer_drops_and_counts(tmp_path):
    dropped0 = metrics.RECORDS_DROPPED.labels("memory")._value.get()
    writer = JournalWriter(tmp_path, memory_records=10)  # not started: nothing drains it
    for f in frames(25):
        writer.submit(f)
    assert writer.buffered == 10 and writer.dropped == 15
    assert metrics.RECORDS_DROPPED.labels("memory")._value.get() == dropped0 + 15
