"""pixelfeed.ray on a local Ray instance, against two live pixelfeed servers.

- the pure location helpers (no Ray cluster, no server);
- a Ray Data pipeline over the bundled real images (``read_binary_files`` →
  ``map_batches(Preprocessor)`` in a 2-actor pool spread over two servers)
  gives the same tensors and errors as the direct client, every file exactly
  once, its ``path`` column passed through;
- fail-over: a dead first server costs nothing but a retry;
- ``drop_errors`` then numpy / torch batches: Ray keeps the
  ``arrow.fixed_shape_tensor`` column as its tensor type;
- ``read_pixelfeed`` against real servers holding the images as a dataset:
  shards spread over a server and its peer, every file once; with a token.

Skipped as a whole, visibly, when Ray is not installed
(``pip install -e 'clients/python[ray]'``).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

import pixelfeed
from conftest import ServerHandle, _start_server

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e 'clients/python[ray]'")
pfray = pytest.importorskip("pixelfeed.ray")

DATA = Path(__file__).resolve().parents[1] / "data" / "images"
SPEC = {"preset": "imagenet", "dtype": "uint8", "layout": "hwc", "normalize": None}


# -- no cluster needed ---------------------------------------------------------------


def test_parse_locations_env_and_forms():
    """Argument forms and the env var normalise to grpc:// URIs, in order, without duplicates."""
    assert pfray.parse_locations("a:1, grpc://b:2 a:1") == ["grpc://a:1", "grpc://b:2"]
    assert pfray.parse_locations(["grpc+tls://c:3"]) == ["grpc+tls://c:3"]
    assert pfray.parse_locations(None, env={"PIXELFEED_LOCATIONS": "10.0.0.1:8815,10.0.0.2:8815"}) == [
        "grpc://10.0.0.1:8815",
        "grpc://10.0.0.2:8815",
    ]
    with pytest.raises(ValueError, match="PIXELFEED_LOCATIONS"):
        pfray.parse_locations(None, env={})


def test_choose_locations_prefers_own_node_then_round_robin():
    """Same-node servers first (rotated by actor index), the others after as fail-over."""
    locs = ["grpc://10.0.0.1:8815", "grpc://10.0.0.2:8815", "grpc://10.0.0.2:8816", "grpc://10.0.0.3:8815"]
    assert pfray.choose_locations(locs, "10.0.0.2", 0)[:2] == ["grpc://10.0.0.2:8815", "grpc://10.0.0.2:8816"]
    assert pfray.choose_locations(locs, "10.0.0.2", 1)[:2] == ["grpc://10.0.0.2:8816", "grpc://10.0.0.2:8815"]
    # No server on this node: plain round robin over all of them.
    firsts = [pfray.choose_locations(locs, "10.9.9.9", i)[0] for i in range(4)]
    assert firsts == locs
    # Every candidate list is a permutation: fail-over can reach every server.
    for i in range(5):
        assert sorted(pfray.choose_locations(locs, "10.0.0.2", i)) == sorted(locs)


def test_expand_locations_headless_service():
    """A name resolving to several pod IPs becomes one location each; TLS keeps the name to verify."""
    fake = {"pf.ns.svc": ["10.1.0.7", "10.1.0.5"]}

    def resolve(host: str) -> List[str]:
        """Stand-in DNS."""
        return sorted(fake.get(host, []))

    assert pfray.expand_locations(["grpc://pf.ns.svc:8815", "grpc://10.2.0.1:9"], resolve) == [
        ("grpc://10.1.0.5:8815", None),
        ("grpc://10.1.0.7:8815", None),
        ("grpc://10.2.0.1:9", None),
    ]
    assert pfray.expand_locations(["grpc+tls://pf.ns.svc:8815"], resolve)[0] == (
        "grpc+tls://10.1.0.5:8815",
        "pf.ns.svc",
    )


# -- fixtures: two servers, one local Ray ----------------------------------------------------


@pytest.fixture(scope="module")
def servers():
    """Two pixelfeed servers on loopback."""
    started: List[ServerHandle] = []
    try:
        started.append(_start_server())
        started.append(_start_server())
        yield started
    finally:
        for s in started:
            s.stop()


@pytest.fixture(scope="module")
def local_ray():
    """``ray.init(num_cpus=2)`` for this module, shut down after it."""
    # A small object store: the test moves a few MB, and CI boxes are shared.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 << 20)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()


def _files() -> List[Path]:
    """Every file under tests/data/images (ATTRIBUTION.tsv included: it must become an error row)."""
    return sorted(p for p in DATA.iterdir() if p.is_file())


@pytest.fixture(scope="module")
def direct(servers) -> Dict[str, Tuple[Optional[np.ndarray], Optional[str]]]:
    """file name → (tensor or None, error) from the plain client, one call over all files."""
    files = _files()
    with pixelfeed.connect(servers[0].location, timeout=120) as c:
        t = c.preprocess_table([p.read_bytes() for p in files], SPEC).combine_chunks()
    x, ok, err = pixelfeed.tensors(t), pixelfeed.valid(t), pixelfeed.errors(t)
    return {p.name: (np.array(x[i]) if ok[i] else None, err[i]) for i, p in enumerate(files)}


def _by_name(table: pa.Table, path_column: str = "path") -> Dict[str, Tuple[Optional[np.ndarray], Optional[str]]]:
    """Rows of an output table keyed by file name; fails on a duplicate."""
    t = table.combine_chunks()
    x, ok, err = pixelfeed.tensors(t), pixelfeed.valid(t), pixelfeed.errors(t)
    out: Dict[str, Tuple[Optional[np.ndarray], Optional[str]]] = {}
    for i, path in enumerate(t.column(path_column).to_pylist()):
        name = Path(path).name
        assert name not in out, f"{name} came back twice"
        out[name] = (np.array(x[i]) if ok[i] else None, err[i])
    return out


def _unquoted(err: Optional[str]) -> Optional[str]:
    """``err`` without its ``(first bytes: ...)`` hint, which only rows the client sent carry."""
    return err.split(" (first bytes")[0] if err else err


def _assert_same(got, want, server_read: bool = False) -> None:
    """Same file set, same errors, identical tensors; ``server_read``: the server read ``got``'s files itself,
    so its errors quote none of their bytes."""
    assert sorted(got) == sorted(want)
    for name, (w_x, w_err) in want.items():
        g_x, g_err = got[name]
        assert g_err == (_unquoted(w_err) if server_read else w_err), name
        if w_x is None:
            assert g_x is None, name
        else:
            assert g_x is not None and g_x.dtype == w_x.dtype and g_x.shape == w_x.shape, name
            assert np.array_equal(g_x, w_x), f"{name}: tensor differs from the direct client's"


def _collect(ds) -> pa.Table:
    """Materialise a dataset as one Arrow table."""
    return pa.concat_tables(ray.get(ds.to_arrow_refs()))


# -- the Ray pipeline --------------------------------------------------------------------------


def test_ray_pipeline_equals_direct_client(servers, local_ray, direct):
    """read_binary_files → Preprocessor actors over two servers: same tensors, every file once."""
    locations = [s.location for s in servers]
    ds = ray.data.read_binary_files(str(DATA), include_paths=True)
    ds = ds.map_batches(
        pfray.Preprocessor,
        fn_constructor_kwargs={"locations": locations, "spec": SPEC, "image_column": "bytes"},
        batch_format="pyarrow",
        batch_size=4,
        compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=0.25,
    )
    out = _collect(ds)
    assert out.num_rows == len(_files())
    assert "bytes" not in out.column_names
    assert out.column_names[0] == "path"
    assert isinstance(out.schema.field("tensor").type, pa.FixedShapeTensorType)
    got = _by_name(out)
    _assert_same(got, direct)
    assert got["ATTRIBUTION.tsv"][1], "a non-image file must be an error row, not a dropped row"
    for s in servers:
        s.check_alive("after the Ray pipeline")


def test_actors_round_robin_over_servers(servers, local_ray):
    """Two actors of one location set get different servers (loopback counts as their own node)."""
    locations = [s.location for s in servers]
    actor_cls = ray.remote(num_cpus=0)(pfray.Preprocessor)
    actors = [actor_cls.remote(locations, SPEC) for _ in range(2)]
    infos = ray.get([a.info.remote() for a in actors])
    assert {i["location"] for i in infos} == set(locations), infos
    assert len({i["index"] for i in infos}) == 2, infos
    for a in actors:
        ray.kill(a)


def _dead_location() -> str:
    """A loopback port nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"grpc://127.0.0.1:{port}"


def test_failover_to_next_server(servers, local_ray, direct):
    """With the first server dead the batch goes to the next one, whole, once."""
    p = pfray.Preprocessor([servers[0].location], SPEC, timeout=60)
    p.candidates = [_dead_location(), servers[1].location]
    p._connect(0)
    files = _files()
    batch = pa.table({"path": [str(f) for f in files], "image": [f.read_bytes() for f in files]})
    out = p(batch)
    assert p.location == servers[1].location
    _assert_same(_by_name(out), direct)


def test_empty_batch_keeps_output_columns(servers, local_ray):
    """A 0-row batch (e.g. after a filter) gets the server's output columns, 0 rows."""
    p = pfray.Preprocessor([servers[0].location], SPEC, image_column="bytes")
    out = p(pa.table({"id": pa.array([], pa.int64()), "bytes": pa.array([], pa.binary())}))
    assert out.num_rows == 0
    assert out.column_names[0] == "id" and {"tensor", "error"} <= set(out.column_names)
    assert isinstance(out.schema.field("tensor").type, pa.FixedShapeTensorType)
    assert out.schema.field("tensor").type.shape == [224, 224, 3]


def test_drop_errors_then_numpy_batches(servers, local_ray, direct):
    """After drop_errors every column converts: tensors arrive as (N, 224, 224, 3) uint8 arrays."""
    files = _files()
    table = pa.table({"name": [f.name for f in files], "image": [f.read_bytes() for f in files]})
    ds = ray.data.from_arrow([table.slice(0, 9), table.slice(9)])  # two blocks, one per actor
    # materialize(): both views below read one run of the pipeline.
    ds = pfray.preprocess(ds, [s.location for s in servers], SPEC, batch_size=5).materialize()
    good = pfray.drop_errors(ds).drop_columns(["name"])
    bad = _collect(pfray.errors_only(ds))
    want_bad = sorted(n for n, (_, e) in direct.items() if e)
    assert sorted(bad.column("name").to_pylist()) == want_bad
    seen = []
    for b in good.iter_batches(batch_format="numpy", batch_size=8):
        geometry = {f"geometry_{n}" for n in ["orientation", "flipped_horizontal", "flipped_vertical", "scale_y",
                                                "scale_x", "box_top", "box_left", "box_height", "box_width"]}
        assert set(b) == {"tensor", "height", "width"} | geometry
        assert b["geometry_scale_x"].dtype == np.float64
        assert b["tensor"].dtype == np.uint8 and b["tensor"].shape[1:] == (224, 224, 3)
        seen.extend(b["tensor"])
    want = [x for _, (x, e) in sorted(direct.items()) if e is None]
    assert len(seen) == len(want)
    # Ray may reorder blocks; compare as a multiset of exact tensors.
    key = lambda a: a.tobytes()  # noqa: E731
    assert sorted(map(key, seen)) == sorted(map(key, want))


def test_iter_torch_batches_yields_tensors(servers, local_ray):
    """iter_torch_batches on the fixed-shape tensor column gives torch tensors (needs torch)."""
    torch = pytest.importorskip("torch", reason="PyTorch not installed (pixelfeed[torch]); numpy path tested above")
    files = [f for f in _files() if f.suffix in (".jpg", ".png")]
    ds = ray.data.from_arrow(pa.table({"image": [f.read_bytes() for f in files]}))
    good = pfray.drop_errors(pfray.preprocess(ds, [s.location for s in servers], SPEC))
    n = 0
    for b in good.iter_torch_batches(batch_size=4):
        assert isinstance(b["tensor"], torch.Tensor) and b["tensor"].dtype == torch.uint8
        assert tuple(b["tensor"].shape[1:]) == (224, 224, 3)
        n += b["tensor"].shape[0]
    assert n > 0


# -- read_pixelfeed ------------------------------------------------------------------------------


def test_read_pixelfeed_reads_each_shard_from_its_server(local_ray, direct):
    """K endpoints spread over a server and its peer become K read tasks; the
    union is every file once, equal to the direct client."""
    peer = _start_server("--dataset", f"images={DATA}")
    first = None
    try:
        first = _start_server("--dataset", f"images={DATA}", "--peer", peer.location)
        source = pfray.PixelfeedDatasource(first.location, "images", SPEC, 3)
        assigned = [ep.locations[0].uri.decode() for ep in source.flight_info(3).endpoints]
        assert assigned == [first.location, peer.location, first.location]
        out = _collect(pfray.read_pixelfeed(first.location, "images", SPEC, shards=3))
        assert out.num_rows == len(_files())
        _assert_same(_by_name(out), direct, server_read=True)
    finally:
        if first is not None:
            first.stop()
        peer.stop()


def test_read_pixelfeed_sends_the_token(local_ray, direct, tmp_path):
    """Against a server that requires a token, both GetFlightInfo and each
    read task's DoGet carry ``connect_kwargs={"token": ...}``."""
    token = "ray-read-token"
    (tmp_path / "token").write_text(token)
    server = _start_server("--auth-token-file", str(tmp_path / "token"), "--dataset", f"images={DATA}")
    try:
        out = _collect(pfray.read_pixelfeed(server.location, "images", SPEC, shards=3,
                                            connect_kwargs={"token": token}))
        assert out.num_rows == len(_files())
        _assert_same(_by_name(out), direct, server_read=True)
        with pytest.raises(flight.FlightUnauthenticatedError):
            pfray.PixelfeedDatasource(server.location, "images", SPEC, 3).flight_info(3)
    finally:
        server.stop()
