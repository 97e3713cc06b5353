"""Shared fixtures for the end-to-end Python tests.

- ``server`` (session): starts the pixelfeed binary (``$PIXELFEED_BIN`` or
  ``<repo>/target/debug/pixelfeed``) with ``serve --listen 127.0.0.1:0``,
  waits for its ``pixelfeed listening on ADDR`` line, and stops it at the end.
  A missing binary or a server that dies is a test *failure*, never a skip.
- ``client``: a ``pixelfeed.Client`` on that server; checks that the server is
  still alive before and after each test that uses it.
- ``corpus``: ``<repo>/../shared/corpus`` (or ``$PIXELFEED_CORPUS``); tests
  that need it are skipped, with the reason shown, when it is absent.

The pixel-comparison tests record their numbers with ``record_diff``; a
terminal-summary hook prints them as a table at the end of the run, so the
measured differences are in the log even without ``-s``.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Deque, Dict, List, Optional

import pytest

from pfhelpers import DIFFS, REPO, SUMMARIES, corpus_path

LISTEN_RE = re.compile(r"pixelfeed listening on (?:grpc(?:\+tcp)?://)?(\d{1,3}(?:\.\d{1,3}){3}:\d+|\[[0-9A-Fa-f:.]+\]:\d+|localhost:\d+|unix:///\S+)")
STARTUP_TIMEOUT_S = float(os.environ.get("PIXELFEED_STARTUP_TIMEOUT", "60"))


def server_binary() -> Path:
    """Path of the server binary under test."""
    env = os.environ.get("PIXELFEED_BIN")
    return Path(env) if env else REPO / "target" / "debug" / "pixelfeed"


@dataclass
class ServerHandle:
    """A running server: its Flight location, process and recent output."""

    location: str
    proc: subprocess.Popen = field(repr=False)
    output: Deque[str] = field(default_factory=lambda: deque(maxlen=200), repr=False)

    @property
    def pid(self) -> int:
        """Process id of the server."""
        return self.proc.pid

    def tail(self, n: int = 40) -> str:
        """The last ``n`` lines the server printed."""
        return "".join(list(self.output)[-n:])

    def check_alive(self, when: str = "") -> None:
        """Fail the current test with the server's last output if it has exited."""
        code = self.proc.poll()
        if code is not None:
            pytest.fail(
                f"pixelfeed server (pid {self.pid}) died{(' ' + when) if when else ''} "
                f"with exit code {code}; last output:\n{self.tail()}",
                pytrace=False,
            )

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM the server, wait up to ``timeout`` s (then kill it); return its exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def rss_kib(self, key: str = "VmRSS") -> int:
        """A memory figure of the server from /proc/<pid>/status, in KiB (VmRSS, VmHWM)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)


def _start_server(*extra_args: str, env: Optional[Dict[str, str]] = None, listen: str = "127.0.0.1:0") -> ServerHandle:
    """Start the binary on ``listen`` (plus ``extra_args`` / ``env``) and wait for its listening line.

    The handle's ``location`` is what pyarrow dials: ``grpc://HOST:PORT``, or
    ``grpc+unix:///PATH`` for ``listen="unix:///PATH"``.
    """
    binary = server_binary()
    if not binary.exists():
        pytest.fail(
            f"server binary {binary} not found: build it with "
            "`cargo build -p pixelfeed-cli --bin pixelfeed` or set PIXELFEED_BIN",
            pytrace=False,
        )
    env = {**os.environ, **(env or {})}
    env.setdefault("RUST_LOG", "warn")
    proc = subprocess.Popen(
        [str(binary), "serve", "--listen", listen, *extra_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        env=env,
    )
    output: Deque[str] = deque(maxlen=200)
    found: List[str] = []
    ready = threading.Event()

    def drain() -> None:
        """Read the server's output for its whole life; spot the listening line."""
        # Keeps reading for the server's whole life so its pipe never fills.
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if not found:
                m = LISTEN_RE.search(line)
                if m:
                    found.append(m.group(1))
                    ready.set()
        ready.set()

    threading.Thread(target=drain, name="pixelfeed-server-output", daemon=True).start()
    ready.wait(STARTUP_TIMEOUT_S)
    if not found:
        code = proc.poll()
        if code is None:
            proc.kill()
            proc.wait()
            why = f"printed no 'pixelfeed listening on ADDR' line within {STARTUP_TIMEOUT_S:.0f} s"
        else:
            why = f"exited with code {code} before listening"
        pytest.fail(f"pixelfeed server {binary} {why}; output:\n{''.join(output)}", pytrace=False)
    scheme = "grpc+" if found[0].startswith("unix://") else "grpc://"
    handle = ServerHandle(location=scheme + found[0], proc=proc, output=output)
    return handle


@pytest.fixture(scope="session")
def server():
    """The pixelfeed server under test (one for the whole session)."""
    # The dataset tests register sources they write under pytest's temporary
    # directory; run-time registration is confined to the roots named here.
    handle = _start_server("--dataset-root", tempfile.gettempdir())
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def location(server: ServerHandle) -> str:
    """``grpc://127.0.0.1:PORT`` of the live server."""
    server.check_alive("before the test")
    return server.location


@pytest.fixture
def client(server: ServerHandle):
    """A ``pixelfeed.Client`` connected to the live server (calls time out after 120 s)."""
    import pixelfeed

    server.check_alive("before the test")
    c = pixelfeed.connect(server.location, timeout=120)
    try:
        yield c
    finally:
        c.close()
    server.check_alive("during the test")


@pytest.fixture(scope="session")
def session_client(server: ServerHandle):
    """A ``pixelfeed.Client`` shared by a whole session (for module-level cached calls)."""
    import pixelfeed

    server.check_alive("before the first call")
    c = pixelfeed.connect(server.location, timeout=300)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="session")
def corpus() -> Path:
    """``<repo>/../shared/corpus``; skips (visibly) when it is not there."""
    path = corpus_path()
    if path is None:
        pytest.skip(f"shared corpus not found at {REPO.parent / 'shared' / 'corpus'} (set PIXELFEED_CORPUS)")
    return path


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    """Print the per-image mean |diff| table and the worst JPEG/PNG values per
    spec, then any table a test left with ``pfhelpers.record_summary``."""
    tr = terminalreporter
    for title, lines in SUMMARIES.items():
        tr.section(title)
        for line in lines:
            tr.write_line(line)
    diffs = DIFFS
    if not diffs:
        return
    tr.section("pixelfeed vs Pillow: mean |diff| on the 0-255 scale")
    specs = sorted({s for s, _ in diffs})
    for spec in specs:
        rows = sorted((img, v) for (s, img), v in diffs.items() if s == spec)
        tr.write_line(f"spec {spec}:")
        for img, (kind, d, note) in rows:
            tr.write_line(f"  {kind:5s} {d:8.4f}  {img}{('  ' + note) if note else ''}")
        for kind in ("JPEG", "PNG"):
            vals = [(d, img) for img, (k, d, _) in rows if k == kind]
            if vals:
                d, img = max(vals)
                tr.write_line(f"  worst {kind}: {d:.4f} ({img}) over {len(vals)} images")
