"""``pixelfeed serve --listen unix:///PATH``: same-host clients over a Unix
domain socket, dialled by pyarrow as ``grpc+unix:///PATH``.

Checked: the announced address is the socket, the client accepts it as
printed, rows (tensor bytes, errors, order) equal the TCP server's, dataset
endpoints name the socket, a second server refuses a live socket, and the
socket file goes away with the server.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

import pixelfeed
from conftest import ServerHandle, _start_server, server_binary
from pfhelpers import bundled_images

SPEC = {"resize": {"mode": "exact", "height": 40, "width": 56}, "dtype": "uint8", "layout": "hwc"}
DATA = Path(__file__).resolve().parents[1] / "data" / "images"


def _socket_dir() -> Path:
    # sun_path holds 108 bytes: pytest's tmp_path can be longer than that.
    return Path(tempfile.mkdtemp(prefix="pf-uds-"))


def _rows(client: pixelfeed.Client, images: list) -> tuple:
    """Tensor bytes, validity and errors of ``images`` through ``client`` (two streams)."""
    table = pa.record_batch({"image": pa.array(images, pa.binary())})
    out = list(client.preprocess([table], spec=SPEC, batch_size=4, streams=2))
    return (
        np.concatenate([pixelfeed.tensors(b) for b in out]),
        np.concatenate([pixelfeed.valid(b) for b in out]),
        [e for b in out for e in pixelfeed.errors(b)],
    )


def test_rows_over_the_socket_equal_rows_over_tcp(client):
    folder = _socket_dir()
    sock = folder / "pf.sock"
    handle: ServerHandle = _start_server(listen=f"unix://{sock}")
    try:
        assert handle.location == f"grpc+unix://{sock}"
        assert sock.is_socket()
        images = [p.read_bytes() for p in bundled_images()] + [b"not an image"]
        # The address exactly as the server printed it.
        with pixelfeed.connect(f"unix://{sock}", timeout=120) as over_socket:
            tensors, valid, errors = _rows(over_socket, images)
        want_tensors, want_valid, want_errors = _rows(client, images)
        assert len(valid) == len(images)
        assert not valid[-1] and "unknown image format" in errors[-1]
        np.testing.assert_array_equal(valid, want_valid)
        assert errors == want_errors
        np.testing.assert_array_equal(tensors[valid], want_tensors[want_valid])
    finally:
        assert handle.stop() == 0, handle.tail()
    assert not sock.exists(), "the socket file outlived the server"
    folder.rmdir()


def test_dataset_endpoints_name_the_socket():
    folder = _socket_dir()
    sock = folder / "pf.sock"
    handle = _start_server("--dataset", f"images={DATA}", listen=f"unix://{sock}")
    try:
        with pixelfeed.connect(handle.location, timeout=120) as c:
            endpoints = c.dataset("images", SPEC).shards(2)
            assert [[loc.uri.decode() for loc in ep.locations] for ep in endpoints] == [[handle.location]] * 2
            table = c.read_all(endpoints)
        assert table.num_rows == len([p for p in DATA.iterdir() if p.is_file()])
    finally:
        handle.stop()
    folder.rmdir()


def test_a_live_socket_is_not_taken_over_and_a_stale_one_is():
    folder = _socket_dir()
    sock = folder / "pf.sock"
    first = _start_server(listen=f"unix://{sock}")
    try:
        second = subprocess.run(
            [str(server_binary()), "serve", "--listen", f"unix://{sock}"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        assert second.returncode != 0
        assert "another server is listening" in second.stderr, second.stderr
        assert first.proc.poll() is None, "the first server died"
    finally:
        # SIGKILL leaves the socket file behind, as a crash would.
        first.proc.kill()
        first.proc.wait()
    assert sock.is_socket()
    third = _start_server(listen=f"unix://{sock}")
    try:
        with pixelfeed.connect(third.location, timeout=60) as c:
            assert c.stats()["threads"] >= 1
    finally:
        third.stop()
    assert not sock.exists()
    folder.rmdir()


def test_a_path_that_is_not_a_socket_is_never_replaced():
    folder = _socket_dir()
    path = folder / "data.txt"
    path.write_text("keep me")
    run = subprocess.run(
        [str(server_binary()), "serve", "--listen", f"unix://{path}"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert run.returncode != 0 and "not a socket" in run.stderr, run.stderr
    assert path.read_text() == "keep me"
    path.unlink()
    folder.rmdir()


def test_unix_locations_get_the_localhost_authority_and_others_nothing():
    """gRPC's C core sends the socket path as ``:authority``, which the
    server's HTTP/2 layer refuses; the client sends ``localhost`` instead,
    unless the caller chose an authority."""
    from pyarrow import flight

    from pixelfeed._connection import unix_socket_options

    loc = "grpc+unix:///run/pf.sock"
    assert unix_socket_options(loc, {})["generic_options"] == [("grpc.default_authority", "localhost")]
    assert unix_socket_options(flight.Location(loc), {"generic_options": [("a", 1)]})["generic_options"] == [
        ("a", 1), ("grpc.default_authority", "localhost")]
    own = {"generic_options": [("grpc.default_authority", "pf")]}
    assert unix_socket_options(loc, own) == own
    assert unix_socket_options("grpc://127.0.0.1:1", {"x": 1}) == {"x": 1}
