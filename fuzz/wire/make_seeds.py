"""Seeds for the wire fuzz target (fuzz_targets/exchange.rs): valid exchanges.

Each seed is what a client sends in one DoExchange, as frames of
``u32 LE length`` + a protobuf ``FlightData`` (encoded here by hand: the
message has four fields). The IPC messages come from pyarrow, so the seeds
are independent of the Rust code under test.

    python fuzz/wire/make_seeds.py OUTDIR
"""

from __future__ import annotations

import io
import json
import struct
import sys
from pathlib import Path

import pyarrow as pa

IMAGES = Path(__file__).resolve().parents[2] / "tests" / "data" / "images"
SPECS = [
    {"resize": {"mode": "exact", "height": 8, "width": 8}, "dtype": "uint8", "layout": "hwc"},
    {"resize": {"mode": "shorter_side", "size": 12}, "crop": {"mode": "center", "height": 8, "width": 8}},
    {"resize": {"mode": "none"}, "crop": {"mode": "box", "top": 0, "left": 0, "height": 4, "width": 4}, "dtype": "uint8"},
]


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def flight_data(header: bytes = b"", body: bytes = b"", cmd: bytes | None = None) -> bytes:
    msg = b""
    if cmd is not None:
        descriptor = varint(1 << 3 | 0) + varint(2) + field(2, cmd)  # type CMD, cmd
        msg += field(1, descriptor)
    if header:
        msg += field(2, header)
    if body:
        msg += field(1000, body)
    return msg


def ipc_messages(table: pa.Table) -> list[tuple[bytes, bytes]]:
    """(flatbuffer header, body) of each IPC message of ``table`` as a stream."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    reader = pa.ipc.MessageReader.open_stream(pa.BufferReader(sink.getvalue()))
    out = []
    for message in reader:
        out.append((message.metadata.to_pybytes(), message.body.to_pybytes() if message.body else b""))
    return out


def seed(spec: dict, table: pa.Table, opener: bool) -> bytes:
    cmd = json.dumps(spec).encode()
    frames = []
    msgs = ipc_messages(table)
    if opener:  # what pyarrow sends first: the descriptor alone
        frames.append(flight_data(cmd=cmd))
        frames += [flight_data(h, b) for h, b in msgs]
    else:
        (h, b), rest = msgs[0], msgs[1:]
        frames.append(flight_data(h, b, cmd=cmd))
        frames += [flight_data(h, b) for h, b in rest]
    return b"".join(struct.pack("<I", len(f)) + f for f in frames)


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    small = sorted(IMAGES.glob("*.*"), key=lambda p: p.stat().st_size)
    images = [p.read_bytes() for p in small if p.suffix in (".jpg", ".png")][:3]
    tables = [
        pa.table({"image": pa.array(images[:1], pa.binary())}),
        pa.table({"image": pa.array(images + [None], pa.binary()), "id": pa.array(range(len(images) + 1), pa.int64())}),
        pa.table({"image": pa.array(images[1:], pa.large_binary())}),
        pa.table({"image": pa.array([b"not an image", b""], pa.binary())}),
    ]
    n = 0
    for i, spec in enumerate(SPECS):
        for j, table in enumerate(tables):
            (out / f"exchange-{i}-{j}").write_bytes(seed(spec, table, opener=(i + j) % 2 == 0))
            n += 1
    print(f"make_seeds: {n} seeds -> {out}")


if __name__ == "__main__":
    main()
