"""Read what an MCAP file cut short still holds.

A recording that ends without closing its file (power lost, process killed, disk full) leaves an
MCAP without the summary and footer that rosbags needs to open it. The records before the cut are
intact: :class:`CutMcap` scans them in file order (complete chunks, and the complete messages of an
uncompressed chunk cut in the middle) and stops at the cut.

MCAP records (the MCAP specification): opcode u8, body length u64, body; a string is a u32 length
and UTF-8 bytes. Only what a replay needs is decoded: schema names, channel topics, messages.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .files import BagError

MAGIC = b"\x89MCAP0\r\n"
OP_FOOTER = 0x02
OP_SCHEMA = 0x03
OP_CHANNEL = 0x04
OP_MESSAGE = 0x05
OP_CHUNK = 0x06
OP_DATA_END = 0x0F
RECORD_HEAD = struct.Struct("<BQ")  # opcode, body length
CHUNK_HEAD = struct.Struct("<QQQI")  # message start time, end time, uncompressed size, uncompressed crc
MESSAGE_HEAD = struct.Struct("<HIQQ")  # channel id, sequence, log time, publish time


def is_cut(path: Path) -> bool:
    """True when an MCAP file does not end with the closing magic: its writer never finished it."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 2 * len(MAGIC):
            return True
        f.seek(-len(MAGIC), os.SEEK_END)
        return f.read() != MAGIC


@dataclass(frozen=True)
class McapMessage:
    """One message of a cut MCAP, still serialised (CDR)."""

    topic: str
    msgtype: str  # the schema name, e.g. sensor_msgs/msg/Image
    log_time_ns: int
    data: bytes


def _string(body: bytes, offset: int) -> tuple[str, int]:
    """The string at ``offset`` and the offset after it."""
    (length,) = struct.unpack_from("<I", body, offset)
    start = offset + 4
    if start + length > len(body):
        raise struct.error("string runs past its record")
    return body[start:start + length].decode("utf-8"), start + length


def _records(buffer: bytes) -> Iterator[tuple[int, bytes]]:
    """(opcode, body) of the complete records in ``buffer``; stops at a record cut short."""
    offset = 0
    while offset + RECORD_HEAD.size <= len(buffer):
        opcode, length = RECORD_HEAD.unpack_from(buffer, offset)
        start = offset + RECORD_HEAD.size
        if start + length > len(buffer):
            return
        yield opcode, buffer[start:start + length]
        offset = start + length


def _chunk_records(body: bytes, cut: bool) -> Iterator[tuple[int, bytes]]:
    """The records inside a chunk record's body; ``cut`` when the body ends early."""
    from rosbags.rosbag2.storage_mcap import decompress  # the chunk codecs rosbags itself reads

    try:
        _, _, size, crc = CHUNK_HEAD.unpack_from(body, 0)
        compression, offset = _string(body, CHUNK_HEAD.size)
        (length,) = struct.unpack_from("<Q", body, offset)
    except (struct.error, UnicodeDecodeError):
        return  # cut inside the chunk's own header
    records = body[offset + 8:offset + 8 + length]
    if compression:
        if cut or len(records) < length:
            return  # a compressed chunk cut short cannot be decompressed: lost whole
        records = decompress(records, compression, size, crc)
    yield from _records(records)


class CutMcap:
    """The messages of an MCAP file, read front to back up to where the file ends."""

    def __init__(self, path: Path):
        self.path = path

    def records(self) -> Iterator[tuple[int, bytes]]:
        """(opcode, body) of the data section's records in file order, chunks opened."""
        with self.path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if f.read(len(MAGIC)) != MAGIC:
                raise BagError(f"{self.path} is not an MCAP file (it does not start with the MCAP magic)")
            while True:
                head = f.read(RECORD_HEAD.size)
                if len(head) < RECORD_HEAD.size:
                    return
                opcode, length = RECORD_HEAD.unpack(head)
                if opcode in (OP_DATA_END, OP_FOOTER):
                    return  # the data section is complete; what follows is the summary
                remaining = size - f.tell()
                if length > remaining:  # the cut is inside this record
                    if opcode == OP_CHUNK:
                        yield from _chunk_records(f.read(remaining), cut=True)
                    return
                body = f.read(length)
                if opcode == OP_CHUNK:
                    yield from _chunk_records(body, cut=False)
                else:
                    yield opcode, body

    def messages(self) -> Iterator[McapMessage]:
        """Every message whose channel was declared before it, in file order."""
        schemas: dict[int, str] = {}
        channels: dict[int, tuple[str, str]] = {}  # id -> (topic, schema name)
        for opcode, body in self.records():
            if opcode == OP_SCHEMA:
                (schema_id,) = struct.unpack_from("<H", body, 0)
                schemas[schema_id], _ = _string(body, 2)
            elif opcode == OP_CHANNEL:
                channel_id, schema_id = struct.unpack_from("<HH", body, 0)
                topic, _ = _string(body, 4)
                channels[channel_id] = (topic, schemas.get(schema_id, ""))
            elif opcode == OP_MESSAGE:
                channel_id, _, log_time_ns, _ = MESSAGE_HEAD.unpack_from(body, 0)
                if channel_id in channels:
                    topic, msgtype = channels[channel_id]
                    yield McapMessage(topic, msgtype, log_time_ns, body[MESSAGE_HEAD.size:])
