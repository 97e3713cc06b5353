"""Auth, TLS and shutdown of the real server binary, driven by pyarrow and the pixelfeed client.

- bearer token: refused without / with a wrong token (UNAUTHENTICATED), served with the
  right one, through ``pixelfeed.connect(token=...)`` and through pyarrow's own
  ``authenticate_basic_token`` handshake (password = token);
- TLS and mutual TLS with a test CA made here by the ``openssl`` CLI (skipped, visibly,
  where it is missing);
- SIGTERM: in-flight calls finish, then the server exits 0; a call that never ends is cut
  at ``--drain-timeout``.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, Optional

import pyarrow.flight as flight
import pytest

import pixelfeed
from conftest import _start_server
from pfhelpers import DATA_IMAGES, bundled_images

TOKEN = "t0ken-for-tests"
SMALL = {"resize": {"mode": "exact", "height": 16, "width": 16}, "dtype": "uint8", "layout": "hwc"}


def _images():
    return [p.read_bytes() for p in bundled_images()]


@pytest.fixture(scope="module")
def token_server():
    """A server that requires TOKEN (given through the environment)."""
    handle = _start_server(env={"PIXELFEED_AUTH_TOKEN": TOKEN})
    yield handle
    assert handle.stop() == 0


def _rows(client: pixelfeed.Client) -> int:
    return sum(b.num_rows for b in client.preprocess(_images(), SMALL, batch_size=4))


def test_token_is_required_on_every_call(token_server):
    for kwargs in ({}, {"token": "wrong"}):
        with pixelfeed.connect(token_server.location, timeout=30, **kwargs) as c:
            with pytest.raises(flight.FlightUnauthenticatedError):
                _rows(c)
            with pytest.raises(flight.FlightUnauthenticatedError):
                c.presets()
    with pixelfeed.connect(token_server.location, timeout=30, token=TOKEN) as c:
        assert _rows(c) == len(_images())
        assert "imagenet" in c.presets()


def test_connection_repr_shows_no_secret(certs):
    with pixelfeed.connect("grpc+tls://localhost:1", token=TOKEN, ca_file=str(certs / "ca.pem"),
                           private_key=(certs / "client.key").read_bytes()) as client:
        conn = client.connection
    shown = repr(conn)
    assert "token=..." in shown and "private_key=..." in shown
    assert TOKEN not in shown and "PRIVATE KEY" not in shown
    assert conn.options().headers == [(b"authorization", b"Bearer " + TOKEN.encode())]


def test_pyarrow_basic_handshake_yields_the_bearer_header(token_server):
    raw = flight.connect(token_server.location)
    header = raw.authenticate_basic_token("anyone", TOKEN)
    assert header == (b"authorization", b"Bearer " + TOKEN.encode())
    options = flight.FlightCallOptions(headers=[header])
    body = next(iter(raw.do_action(flight.Action("health", b""), options))).body.to_pybytes()
    assert body == b'{"status":"ok"}'
    with pytest.raises(flight.FlightUnauthenticatedError):
        raw.authenticate_basic_token("anyone", "not-the-token")
    with pytest.raises(flight.FlightUnauthenticatedError):
        list(raw.do_action(flight.Action("health", b"")))
    raw.close()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(dir: Path, name: str) -> None:
    """``name``.pem / ``name``.key: a self-signed CA (EC P-256)."""
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=dir,
    )


def _issue(dir: Path, ca: str, name: str, dns: str, ip: Optional[str] = None) -> None:
    """``name``.pem / ``name``.key: a leaf for DNS name ``dns`` (and address ``ip``) signed by ``ca``."""
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={dns}", cwd=dir,
    )
    names = f"DNS:{dns}" + (f",IP:{ip}" if ip else "")
    (dir / f"{name}.ext").write_text(f"subjectAltName={names}\nbasicConstraints=CA:FALSE\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=dir,
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """A server CA with a ``localhost`` certificate (and one also valid for 127.0.0.1),
    and a client CA with one client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is not installed: cannot make test certificates")
    d = tmp_path_factory.mktemp("certs")
    _make_ca(d, "ca")
    _issue(d, "ca", "server", "localhost")
    _issue(d, "ca", "server-ip", "localhost", ip="127.0.0.1")
    _make_ca(d, "client-ca")
    _issue(d, "client-ca", "client", "trainer")
    return d


def _tls_location(handle) -> str:
    return "grpc+tls://localhost:" + handle.location.rsplit(":", 1)[1]


def _works(location: str, **kwargs) -> bool:
    try:
        with pixelfeed.connect(location, timeout=10, **kwargs) as c:
            return _rows(c) == len(_images())
    except flight.FlightError:
        return False


def test_tls_with_a_ca_file(certs):
    handle = _start_server("--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"))
    try:
        location = _tls_location(handle)
        assert _works(location, ca_file=str(certs / "ca.pem"))
        assert not _works(location, ca_file=str(certs / "client-ca.pem")), "untrusted CA"
        assert not _works(handle.location), "plaintext to a TLS port"
    finally:
        assert handle.stop() == 0


def test_mutual_tls_needs_a_client_certificate(certs):
    handle = _start_server(
        "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
        "--tls-client-ca", str(certs / "client-ca.pem"),
    )
    try:
        location = _tls_location(handle)
        ca = str(certs / "ca.pem")
        identity: Dict[str, bytes] = {
            "cert_chain": (certs / "client.pem").read_bytes(),
            "private_key": (certs / "client.key").read_bytes(),
        }
        assert _works(location, ca_file=ca, **identity)
        assert not _works(location, ca_file=ca), "no client certificate"
    finally:
        assert handle.stop() == 0


def test_shards_on_a_peer_are_read_with_the_same_tls_identity_and_token(certs, tmp_path):
    """A shard endpoint naming a peer is read from the peer with the client's
    CA, client certificate and token: here the server that answered
    GetFlightInfo is gone, so every shard must come from its peer."""
    (tmp_path / "token").write_text(TOKEN)
    args = (
        "--tls-cert", str(certs / "server-ip.pem"), "--tls-key", str(certs / "server-ip.key"),
        "--tls-client-ca", str(certs / "client-ca.pem"), "--auth-token-file", str(tmp_path / "token"),
        "--dataset", f"images=dir:{DATA_IMAGES}",
    )
    peer = _start_server(*args)
    first = None
    try:
        peer_url = "grpc+tls://" + peer.location.split("://", 1)[1]
        first = _start_server(*args, "--peer", peer_url)
        client = pixelfeed.connect(
            "grpc+tls://" + first.location.split("://", 1)[1], timeout=30, token=TOKEN,
            ca_file=str(certs / "ca.pem"), cert_chain=(certs / "client.pem").read_bytes(),
            private_key=(certs / "client.key").read_bytes(),
        )
        with client:
            endpoints = client.dataset("images", SMALL).shards(2)
            for ep in endpoints:
                assert peer_url in [loc.uri.decode() for loc in ep.locations]
            both_up = client.read_all(endpoints)
            assert first.stop() == 0
            peer_only = client.read_all(endpoints)
        assert peer_only.num_rows == both_up.num_rows == len(list(DATA_IMAGES.iterdir()))
        assert peer_only.equals(both_up)
    finally:
        if first is not None:
            first.stop()
        assert peer.stop() == 0


def test_sigterm_lets_in_flight_calls_finish_then_exits_0():
    handle = _start_server("--drain-timeout", "20")
    images = _images()
    n_batches = 8
    result: Dict[str, object] = {}

    def slow_input():
        for _ in range(n_batches):
            time.sleep(0.2)
            yield from images[:4]

    def run() -> None:
        try:
            with pixelfeed.connect(handle.location, timeout=60) as c:
                result["rows"] = sum(b.num_rows for b in c.preprocess(slow_input(), SMALL, batch_size=4))
        except BaseException as e:  # noqa: BLE001 - reported below
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.5)  # the call is in flight (about 1.6 s of input in all)
    handle.proc.terminate()
    t.join(30)
    assert "error" not in result, result.get("error")
    assert result.get("rows") == 4 * n_batches
    assert handle.proc.wait(timeout=10) == 0, handle.tail()


def test_drain_timeout_cuts_a_call_that_never_ends():
    handle = _start_server("--drain-timeout", "1")
    stop = threading.Event()

    def endless():
        yield _images()[0]
        stop.wait(30)

    def run() -> None:
        with pixelfeed.connect(handle.location, timeout=60) as c:
            try:
                for _ in c.preprocess(endless(), SMALL, batch_size=1):
                    pass
            except Exception:  # noqa: BLE001 - the server went away: expected
                pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(0.5)
    started = time.monotonic()
    handle.proc.terminate()
    code = handle.proc.wait(timeout=15)
    elapsed = time.monotonic() - started
    stop.set()
    assert code == 0, handle.tail()
    assert 0.8 < elapsed < 10, elapsed
