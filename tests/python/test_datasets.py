"""Server-side datasets and offline conversion, checked with pyarrow.

Fixtures are built here from the bundled images: a Parquet table written with
pyarrow, WebDataset tars written with ``tarfile``, a plain directory. The
reference is always the streaming path (``DoExchange`` via
``client.preprocess``) on the same bytes.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from conftest import server_binary
from pfhelpers import DATA_IMAGES

import pixelfeed
from pixelfeed._connection import Connection
from pixelfeed.datasets import assign_shards, read, read_table

SPEC = {"preset": "imagenet", "resize": {"mode": "shorter_side", "size": 40},
        "crop": {"mode": "center", "height": 32, "width": 32}}


def _images():
    paths = sorted(p for p in DATA_IMAGES.iterdir() if p.suffix in (".jpg", ".png"))
    assert len(paths) >= 10
    return [(p.name, p.read_bytes()) for p in paths]


def _streamed(client, images, spec=SPEC) -> np.ndarray:
    """Tensors of the streaming path (DoExchange) for these bytes, in order."""
    batches = list(client.preprocess([b for _, b in images], spec, batch_size=5))
    return np.concatenate([pixelfeed.tensors(b) for b in batches])


def _tensor(table: pa.Table) -> np.ndarray:
    col = table.column("tensor").combine_chunks()
    assert isinstance(col.type, pa.FixedShapeTensorType), col.type
    return col.to_numpy_ndarray()


def test_parquet_dataset_sharded_read_equals_streaming(client, tmp_path: Path):
    images = _images()
    path = tmp_path / "imgs.parquet"
    table = pa.table({"name": [n for n, _ in images], "img": pa.array([b for _, b in images], pa.binary())})
    pq.write_table(table, path, row_group_size=4)
    name = f"pq-{uuid.uuid4().hex[:8]}"
    assert client.register_dataset(name, f"parquet:{path}?column=img") == {"name": name, "rows": len(images)}

    endpoints = client.dataset(name, SPEC).shards(3)
    assert len(endpoints) == 3
    got = client.read_all(endpoints, parallel=3)
    assert got.column("name").to_pylist() == [n for n, _ in images]
    np.testing.assert_array_equal(_tensor(got), _streamed(client, images))
    # One shard read alone holds its contiguous slice.
    first = pa.Table.from_batches(list(client.read(endpoints[0])))
    assert first.column("name").to_pylist() == [n for n, _ in images][: first.num_rows]


def test_an_endpoint_without_locations_is_read_from_the_server_asked(client, tmp_path: Path):
    """The Flight convention: no location means the server that answered GetFlightInfo."""
    images = _images()
    path = tmp_path / "imgs.parquet"
    pq.write_table(pa.table({"image": pa.array([b for _, b in images], pa.binary())}), path)
    name = f"noloc-{uuid.uuid4().hex[:8]}"
    client.register_dataset(name, f"parquet:{path}")
    endpoints = client.dataset(name, SPEC).shards(2)
    bare = [flight.FlightEndpoint(ep.ticket, []) for ep in endpoints]
    got = client.read_all(bare)
    np.testing.assert_array_equal(_tensor(got), _streamed(client, images))
    # A bare Connection (no open client) reads it from its own location too.
    np.testing.assert_array_equal(_tensor(read_table(client.connection, bare[1])),
                                  _tensor(pa.Table.from_batches(list(client.read(endpoints[1])))))


def test_webdataset_tar_built_with_tarfile(client, tmp_path: Path):
    images = _images()
    path = tmp_path / "shard-000.tar"
    with tarfile.open(path, "w") as tar:
        for i, (n, data) in enumerate(images):
            for ext, payload in (("cls", str(i % 3).encode()), (Path(n).suffix[1:], data), ("json", b'{"n": 1}')):
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    name = f"wds-{uuid.uuid4().hex[:8]}"
    client.register_dataset(name, f"tar:{path}")
    got = client.read_all(client.dataset(name, SPEC).shards(2))
    assert got.column_names[:3] == ["key", "cls", "json"]
    assert got.column("key").to_pylist() == [f"{i:05d}" for i in range(len(images))]
    assert got.column("cls").to_pylist() == [str(i % 3) for i in range(len(images))]
    np.testing.assert_array_equal(_tensor(got), _streamed(client, images))


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_convert_output_reads_back_with_pyarrow(client, tmp_path: Path, fmt: str):
    images = _images()
    src = tmp_path / "src"
    src.mkdir()
    for n, data in images:
        (src / n).write_bytes(data)
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(pixelfeed.encode_spec(SPEC).decode())
    dest = tmp_path / "out"
    run = subprocess.run(
        [str(server_binary()), "convert", f"dir:{src}", str(dest), "--spec", str(spec_file),
         "--shards", "3", "--format", fmt],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert f"{len(images) + 1} rows ({len(images)} ok, 1 errors) in 3 shards" in run.stdout, run.stdout

    files = sorted(dest.glob(f"part-*.{fmt}"))
    assert len(files) == 3
    if fmt == "parquet":
        table = pa.concat_tables([pq.read_table(f) for f in files])
    else:
        table = pa.concat_tables([ipc.open_file(pa.memory_map(str(f))).read_all() for f in files])
    names = table.column("path").to_pylist()
    assert names == sorted([n for n, _ in images] + ["broken.jpg"])
    errors = table.column("error").to_pylist()
    assert errors[names.index("broken.jpg")] is not None
    expected = _streamed(client, [(n, (src / n).read_bytes()) for n in names if n != "broken.jpg"])
    np.testing.assert_array_equal(_tensor(table.filter(pc.is_null(table.column("error")))), expected)


def test_assign_shards_partitions_without_overlap():
    for n in (1, 7, 16):
        for world in (1, 2, 3):
            for workers in (1, 2, 4):
                taken = [i for r in range(world) for w in range(workers)
                         for i in assign_shards(n, r, world, w, workers)]
                assert sorted(taken) == list(range(n)), (n, world, workers)
    with pytest.raises(ValueError):
        assign_shards(4, rank=2, world_size=2)


def test_torch_sharded_dataset_splits_ranks_and_workers(client, location, tmp_path: Path):
    torch = pytest.importorskip("torch", reason="pixelfeed.torch needs PyTorch (extra 'torch')")
    from pixelfeed.torch import ShardedDataset

    images = _images()
    src = tmp_path / "src"
    src.mkdir()
    for n, data in images:
        (src / n).write_bytes(data)
    name = f"dir-{uuid.uuid4().hex[:8]}"
    client.register_dataset(name, f"dir:{src}")
    seen = []
    for rank in range(2):
        ds = ShardedDataset(location, name, SPEC, shards=8, rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        seen += [p for batch in loader for p in batch.column("path").to_pylist()]
    assert sorted(seen) == sorted(n for n, _ in images)
    assert len(seen) == len(set(seen))


#: A spec with random crops and flips: every draw depends on the seed and the
#: row's index in the dataset, so shards must reproduce a single streamed call.
RANDOM = {"preset": "imagenet_train", "seed": 77, "crop": {"mode": "random_resized_crop", "height": 32, "width": 32}}


def test_random_draws_follow_the_dataset_row_not_the_shard(client, tmp_path: Path):
    images = _images()
    path = tmp_path / "imgs.parquet"
    pq.write_table(pa.table({"image": pa.array([b for _, b in images], pa.binary())}), path, row_group_size=3)
    name = f"rnd-{uuid.uuid4().hex[:8]}"
    client.register_dataset(name, f"parquet:{path}")
    streamed = _streamed(client, images, RANDOM)
    for shards in (1, 4):
        got = client.read_all(client.dataset(name, RANDOM).shards(shards), parallel=2)
        np.testing.assert_array_equal(_tensor(got), streamed, err_msg=f"{shards} shards")

    spec_file = tmp_path / "random.json"
    spec_file.write_text(pixelfeed.encode_spec(RANDOM).decode())
    dest = tmp_path / "converted"
    run = subprocess.run(
        [str(server_binary()), "convert", f"parquet:{path}", str(dest), "--spec", str(spec_file), "--shards", "3"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    table = pa.concat_tables([pq.read_table(f) for f in sorted(dest.glob("part-*.parquet"))])
    np.testing.assert_array_equal(_tensor(table), streamed)


class _ShardServer(flight.FlightServerBase):
    """Serves any ticket as ``rows`` one-row batches of ``id``; fails after ``fail_after`` of them."""

    def __init__(self, rows: int, fail_after: Optional[int] = None) -> None:
        super().__init__("grpc://127.0.0.1:0")
        self.uri = f"grpc://127.0.0.1:{self.port}"
        self.rows, self.fail_after, self.calls = rows, fail_after, 0

    def do_get(self, context, ticket):
        self.calls += 1
        schema = pa.schema([("id", pa.int64())])

        def batches():
            for i in range(self.rows):
                if i == self.fail_after:
                    raise flight.FlightUnavailableError("went away mid-shard")
                yield pa.record_batch([pa.array([i], pa.int64())], schema=schema)

        return flight.GeneratorStream(schema, batches())


def test_a_shard_streamed_in_part_is_not_read_again_elsewhere():
    """``read`` moves to the next location only before the first batch: after
    it, the rows already handed out would come again from the alternative."""
    broken, spare = _ShardServer(4, fail_after=2), _ShardServer(4)
    try:
        conn = Connection(broken.uri, timeout=30)
        endpoint = flight.FlightEndpoint(b"shard", [broken.uri, spare.uri])
        seen, error = [], None
        try:
            for batch in read(conn, endpoint):
                seen += batch.column("id").to_pylist()
        except flight.FlightUnavailableError as e:
            error = e
        assert seen == [0, 1], "rows handed out twice"
        assert "mid-shard" in str(error)
        assert spare.calls == 0
        # Unreachable before any row: the alternative serves the whole shard.
        down = flight.FlightEndpoint(b"shard", [_dead_location(), spare.uri])
        assert [i for b in read(conn, down) for i in b.column("id").to_pylist()] == [0, 1, 2, 3]
        # read_table hands nothing out before the end, so it may start over elsewhere.
        assert read_table(conn, endpoint).column("id").to_pylist() == [0, 1, 2, 3]
    finally:
        broken.shutdown()
        spare.shutdown()


def _dead_location() -> str:
    """A loopback port nothing listens on."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"grpc://127.0.0.1:{port}"
