"""Every JPEG layout a conforming encoder writes, through the server, against Pillow.

``jpeg_matrix`` generates ~300 valid JPEGs (sampling factors, interleaved /
non-interleaved / partially interleaved scans in any component order, tables
between scans, progressive scripts, restart intervals, 16-bit tables, gray,
RGB, CMYK/YCCK, arithmetic coding, header rewrites) once per session into a
temporary folder, with Pillow's decode of each. Every file goes through the
server with a spec that keeps the whole image as uint8 HWC, once per decoder
(:data:`DECODERS`), and each row must be

- a tensor within mean |diff| <= 1.0 (0-255 scale) of Pillow, with no
  warning, or
- an error row whose message starts with ``unsupported JPEG:`` (the feature
  named, e.g. arithmetic coding).

A tensor off by more than that without an error is always a failure (a wrong
tensor trains on garbage), and so is any other error. The per-layout outcome
for each decoder is printed at the end of the run.

libjpeg-turbo (the decoder of every documented build) must decode every file.
zune-jpeg 0.5 (the pure-Rust fallback) gets several valid layouts wrong, so the
server's header walk refuses those by name; here :func:`zune_limits` states
the same rules independently, from the file's headers (:data:`ZUNE_RULES`),
and each file must be refused exactly when they (or arithmetic coding) say
so, and decoded like Pillow otherwise.

Run alone::

    PIXELFEED_BIN=target/release/pixelfeed .venv/bin/python -m pytest tests/python/test_jpeg_matrix.py -q

Needs ``cjpeg``/``djpeg``/``jpegtran`` (``apt-get install libjpeg-turbo-progs``);
without them every test here skips, saying so.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

import jpeg_matrix as jm
from pfhelpers import record_summary

#: Decoder name -> the spec fragment that pins it.
DECODERS: Dict[str, Dict[str, Any]] = {name: {"decoder": name} for name in ("libjpeg-turbo", "zune-jpeg")}

TOLERANCE = 1.0
REFUSAL = "unsupported JPEG:"

def full_image_spec(width: int, height: int, decoder: str) -> Dict[str, Any]:
    """The whole ``width`` x ``height`` image as decoded, uint8 HWC, by ``decoder``."""
    return {
        "resize": {"mode": "none"},
        "crop": {"mode": "box", "top": 0, "left": 0, "height": height, "width": width},
        "color": "rgb",
        "dtype": "uint8",
        "layout": "hwc",
        "normalize": None,
        "exif_orientation": False,
        **DECODERS[decoder],
    }


class Outcome(NamedTuple):
    """What the server made of one file."""

    kind: str  # ok | refused (by name) | wrong (pixels) | warning | error (any other) | shape
    diff: Optional[float]
    message: Optional[str]

    @property
    def passed(self) -> bool:
        return self.kind in ("ok", "refused")

    def describe(self) -> str:
        if self.kind == "ok":
            return f"ok ({self.diff:.3f})"
        if self.kind == "wrong":
            return f"WRONG PIXELS, no error: mean |diff| {self.diff:.2f}"
        if self.kind == "warning":
            return f"warning {self.message!r} (mean |diff| {self.diff:.2f})"
        if self.kind == "refused":
            return f"refused: {self.message}"
        return f"{self.kind}: {self.message}"


# ---------------------------------------------------------------------------------------
# What zune-jpeg 0.5 gets wrong, stated on the headers (SOF, SOS, DQT) alone.

#: rule -> what zune-jpeg 0.5 does with such a file (measured on this matrix and
#: on size/sampling sweeps before the header walk refused them).
ZUNE_RULES = {
    "sequential multi-scan": "SOF0/SOF1 frame with more than one SOS (non-interleaved or partially interleaved, any "
                             "component order): wrong pixels without error, depending on size and data even at 4:4:4; "
                             "'No DC table for component Y' when component 1's DHT comes after the first SOS; "
                             "APPn between scans: recovery warning",
    "H sampling 3": "a component with horizontal sampling factor 3: 'Horizontal sample is not a power of two(3)'",
    "first component H < Hmax": "the first component's H below another's (chroma finer than luma horizontally): "
                                "wrong pixels (sequential), 'Invalid image' (progressive)",
    "V strictly between 1 and Vmax": "a component with 1 < V < Vmax (e.g. 1x4,1x2,1x1): 'Invalid component dimensions'",
    "DQT after the first SOS": "a table a frame component uses first defined after the first SOS: "
                               "'No quantization table for component ...'",
    "progressive refinement incomplete": "a progressive file whose scans leave some coefficients short of full "
                                         "precision (Al > 0 at the end, or an AC band never coded): libjpeg's block "
                                         "smoothing estimates the missing bits, zune leaves them zero (mean 2-3, max 14)",
}


def zune_limits(data: bytes) -> List[str]:
    """The :data:`ZUNE_RULES` a JPEG's headers hit (empty: zune-jpeg decodes it right)."""
    j = jm.Jpeg(data)
    comps = j.components()
    hs = [h for _, h, _, _ in comps]
    vs = [v for _, _, v, _ in comps]
    scans = j.scan_positions()
    hits = []
    if j.sof.marker in (0xC0, 0xC1) and len(scans) > 1:
        hits.append("sequential multi-scan")
    if 3 in hs:
        hits.append("H sampling 3")
    if len(comps) > 1 and hs[0] < max(hs):
        hits.append("first component H < Hmax")
    if any(1 < v < max(vs) for v in vs):
        hits.append("V strictly between 1 and Vmax")
    defined = set()
    for seg in j.segments[: scans[0]]:
        if seg.marker == jm.DQT:
            defined.update(pq & 15 for pq in jm.dqt_entries(seg.body))
    if {tq for *_, tq in comps} - defined:
        hits.append("DQT after the first SOS")
    if j.sof.marker == 0xC2 and unrefined(j):
        hits.append("progressive refinement incomplete")
    return hits


def unrefined(j: "jm.Jpeg") -> bool:
    """Whether some component's coefficients never reach full precision
    (successive approximation Al = 0) in any scan, band by band."""
    full: Dict[int, set] = defaultdict(set)
    for pos in j.scan_positions():
        body = j.segments[pos].body
        n = body[0]
        ss, se, al = body[1 + 2 * n], body[2 + 2 * n], body[3 + 2 * n] & 15
        if al == 0:
            for cid in body[1 : 1 + 2 * n : 2]:
                full[cid].update(range(ss, se + 1))
    return any(full[cid] != set(range(64)) for cid, *_ in j.components())


def must_refuse(decoder: str, data: bytes) -> List[str]:
    """Why the server must refuse this file by name with ``decoder`` (empty: it must decode it)."""
    if decoder != "zune-jpeg":
        return []
    why = zune_limits(data)
    if jm.Jpeg(data).sof.marker in (0xC9, 0xCA):
        why.append("arithmetic coding")
    return why


# ---------------------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope="session")
def matrix(tmp_path_factory) -> Tuple[Path, List[Dict[str, str]], float]:
    """(folder, manifest rows, seconds) of the generated matrix."""
    why = jm.missing_tools()
    if why:
        pytest.skip(why)
    out = tmp_path_factory.mktemp("jpeg_matrix")
    t0 = time.perf_counter()
    rows = jm.generate(out, verbose=False)
    return out, rows, time.perf_counter() - t0


def _ppm_array(path: Path) -> np.ndarray:
    w, h, data = jm.read_ppm(path.read_bytes())
    return np.frombuffer(data, np.uint8).reshape(h, w, 3)


def _run_decoder(client, folder: Path, rows: List[Dict[str, str]], decoder: str) -> Dict[str, Outcome]:
    """Every file through the server with ``decoder``: one call per image size."""
    import pixelfeed

    by_size: Dict[Tuple[int, int], List[Dict[str, str]]] = defaultdict(list)
    for r in rows:
        by_size[(int(r["width"]), int(r["height"]))].append(r)
    out: Dict[str, Outcome] = {}
    for (w, h), group in sorted(by_size.items()):
        table = pa.table({
            "id": pa.array([r["name"] for r in group], pa.string()),
            "image": pa.array([(folder / f"{r['name']}.jpg").read_bytes() for r in group], pa.binary()),
        })
        seen: List[str] = []
        for batch in client.preprocess(table, spec=full_image_spec(w, h, decoder), batch_size=16):
            x = pixelfeed.tensors(batch)
            ok = pixelfeed.valid(batch)
            errs = pixelfeed.errors(batch)
            warns = pixelfeed.warnings(batch)
            for i, name in enumerate(batch.column("id").to_pylist()):
                seen.append(name)
                if not ok[i]:
                    err = errs[i] or "(null tensor, no error)"
                    out[name] = Outcome("refused" if err.startswith(REFUSAL) else "error", None, err)
                    continue
                ref = _ppm_array(folder / f"{name}.ppm")
                got = np.asarray(x[i])
                if got.shape != ref.shape:
                    out[name] = Outcome("shape", None, f"tensor {got.shape}, Pillow {ref.shape}")
                    continue
                diff = float(np.abs(got.astype(np.int16) - ref.astype(np.int16)).mean())
                if warns[i] is not None:
                    out[name] = Outcome("warning", diff, warns[i])
                else:
                    out[name] = Outcome("ok" if diff <= TOLERANCE else "wrong", diff, None)
        assert seen == [r["name"] for r in group], "rows came back out of order or missing"
    return out


@pytest.fixture(scope="session")
def decoded(matrix, session_client):
    """``get(decoder)`` -> {file name: Outcome}, one pass over the matrix per decoder (cached);
    skips when the server lacks the decoder (the build's refusal shown)."""
    folder, rows, _ = matrix
    cache: Dict[str, Any] = {}

    def get(decoder: str) -> Dict[str, Outcome]:
        if decoder not in cache:
            try:
                cache[decoder] = _run_decoder(session_client, folder, rows, decoder)
                _summarise(folder, rows, cache)
            except (flight.FlightError, pa.ArrowException) as e:
                # A build without the decoder refuses the spec by name
                # ("built without libjpeg-turbo"); anything else is a failure.
                if "built without" not in str(e):
                    raise
                cache[decoder] = f"server has no {decoder} decoder: {e}"
        if isinstance(cache[decoder], str):
            pytest.skip(cache[decoder])
        return cache[decoder]

    return get


def _summarise(folder: Path, rows: List[Dict[str, str]], cache: Dict[str, Any]) -> None:
    """Per-layout table of outcomes for the decoders run so far (end-of-run summary)."""
    done = [d for d in DECODERS if isinstance(cache.get(d), dict)]
    by_layout: Dict[str, List[str]] = defaultdict(list)
    for r in rows:
        by_layout[r["layout"]].append(r["name"])
    width = max(len(n) for n in by_layout)
    lines = [f"{'layout':{width}s}  files  " + "  ".join(f"{d:34s}" for d in done)]
    details: List[str] = []
    totals = {d: defaultdict(int) for d in done}
    for layout, names in by_layout.items():
        cells = []
        for d in done:
            res = [cache[d][n] for n in names]
            counts: Dict[str, int] = defaultdict(int)
            for o in res:
                counts[o.kind] += 1
                totals[d][o.kind] += 1
            parts = []
            for kind in ("ok", "wrong", "warning", "refused", "error", "shape"):
                if counts[kind]:
                    extra = ""
                    if kind in ("wrong", "warning"):
                        extra = f" (<= {max(o.diff for o in res if o.kind == kind):.1f})"
                    parts.append(f"{kind} {counts[kind]}{extra}")
            cells.append(", ".join(parts))
            for n, o in zip(names, res):
                if o.kind != "ok":
                    details.append(f"  {d:14s} {n}: {o.describe()}")
        lines.append(f"{layout:{width}s}  {len(names):5d}  " + "  ".join(f"{c:34s}" for c in cells))
    for d in done:
        lines.append(f"total {d}: " + ", ".join(f"{k} {v}" for k, v in sorted(totals[d].items())) + f" of {len(rows)}")
    if "zune-jpeg" in done:
        lines.append("zune-jpeg rules (header walk): files flagged / of those failing today / failing files not flagged")
        flagged: Dict[str, List[str]] = defaultdict(list)
        for r in rows:
            for rule in zune_limits((folder / f"{r['name']}.jpg").read_bytes()):
                flagged[rule].append(r["name"])
        unflagged = [r["name"] for r in rows if not cache["zune-jpeg"][r["name"]].passed
                     and not zune_limits((folder / f"{r['name']}.jpg").read_bytes())]
        for rule in ZUNE_RULES:
            failing = sum(1 for n in flagged[rule] if not cache["zune-jpeg"][n].passed)
            lines.append(f"  {rule:32s} {len(flagged[rule]):4d} {failing:4d}")
        lines.append(f"  failing, no rule: {len(unflagged)} {unflagged[:20]}")
    record_summary("JPEG layout matrix: outcome per layout (ok = within 1.0 of Pillow, no warning)", lines + details)


# ---------------------------------------------------------------------------------------
# The generator itself.


def test_matrix_manifest(matrix):
    folder, rows, seconds = matrix
    names = [r["name"] for r in rows]
    assert len(set(names)) == len(names)
    assert 200 <= len(rows) <= 320, f"{len(rows)} files"
    assert {r["layout"] for r in rows} == set(jm.layout_names())
    assert all(r["expect"] == "ok" for r in rows)
    for r in rows:
        assert (folder / f"{r['name']}.jpg").is_file() and (folder / f"{r['name']}.ppm").is_file()
        assert r["components"] in ("1", "3", "4")
    assert seconds < 60, f"generation took {seconds:.1f} s"
    record_summary("JPEG layout matrix: generation", [
        f"{len(rows)} files, {len(jm.LAYOUTS)} layouts, generated in {seconds:.1f} s",
        *[f"skipped {what}: {why}" for what, why in jm.SKIPPED.items()],
    ])


def test_matrix_is_deterministic(matrix, tmp_path):
    """Same inputs, same bytes: a second generation is identical file for file."""
    folder, rows, _ = matrix
    again = tmp_path / "again"
    jm.generate(again, verbose=False)
    first = sorted(p.name for p in folder.iterdir())
    assert sorted(p.name for p in again.iterdir()) == first
    differ = [n for n in first if (folder / n).read_bytes() != (again / n).read_bytes()]
    assert not differ, f"not deterministic: {differ[:10]}"


def test_matrix_files_are_valid(matrix):
    """djpeg decodes every file with no warning, to Pillow's pixels (NAME.ppm)."""
    folder, _, _ = matrix
    problems = jm.validate(folder)
    assert not problems, "\n".join(problems)


def test_rewriter_round_trips_every_file(matrix):
    """The segment parser gives back the exact bytes (so rewrites change only what they say)."""
    folder, rows, _ = matrix
    for r in rows:
        data = (folder / f"{r['name']}.jpg").read_bytes()
        if r["layout"].startswith("rw_fill_bytes"):
            continue  # parsing drops fill bytes by design
        assert jm.Jpeg(data).encode() == data, r["name"]


# ---------------------------------------------------------------------------------------
# The server against Pillow, per layout and decoder.


@pytest.mark.parametrize("layout", jm.layout_names())
@pytest.mark.parametrize("decoder", list(DECODERS))
def test_layout_decodes_like_pillow(decoded, matrix, decoder: str, layout: str):
    folder, rows, _ = matrix
    results = decoded(decoder)
    mine = [r for r in rows if r["layout"] == layout]
    assert mine
    bad = []
    for r in mine:
        o = results[r["name"]]
        why = must_refuse(decoder, (folder / f"{r['name']}.jpg").read_bytes())
        if why and o.kind != "refused":
            bad.append(f"{r['name']}: {o.describe()}; must be refused by name ({', '.join(why)})")
        elif not why and o.kind != "ok":
            bad.append(f"{r['name']}: {o.describe()}; must decode like Pillow")
    what = jm.LAYOUTS[jm.layout_names().index(layout)].what
    assert not bad, f"{decoder}, layout {layout} ({what}):\n" + "\n".join(bad)


def test_zune_rules_read_the_headers(matrix):
    """The Python statement of the header-walk rules flags what it should."""
    folder, rows, _ = matrix
    first = {}
    for r in rows:
        first.setdefault(r["layout"], (folder / f"{r['name']}.jpg").read_bytes())
    assert zune_limits(first["base_420"]) == []
    assert zune_limits(first["prog_chroma_first_420"]) == []
    assert zune_limits(first["rw_dqt_redefined_after_use_444"]) == ["sequential multi-scan"]
    assert zune_limits(first["noni_cb_cr_y_420"]) == ["sequential multi-scan"]
    assert zune_limits(first["base_h3"]) == ["H sampling 3"]
    assert zune_limits(first["base_y1_c21"]) == ["first component H < Hmax"]
    assert zune_limits(first["base_y14_cb12_cr11"]) == ["V strictly between 1 and Vmax"]
    assert zune_limits(first["rw_dqt_between_scans_prog_420"]) == ["DQT after the first SOS"]
