"""A deterministic matrix of valid JPEG layouts.

Bundled photos (``tests/data/images``) are cropped to odd sizes and encoded
in every layout a conforming encoder can write: libjpeg-turbo's ``cjpeg``
(``-sample``, ``-scans``, ``-restart``, ``-optimize``, ``-progressive``,
``-rgb``, ``-grayscale``, ``-quality``/``-baseline``, ``-qtables``/``-qslots``,
``-arithmetic``), ``jpegtran`` (for the CMYK files Pillow writes) and, where
the tools cannot, :class:`Jpeg`, a small segment rewriter of our own that
only makes transformations T.81 allows (tables moved, merged or redefined
between scans, fill bytes, COM/APP segments between scans, other component
ids, the Adobe transform flag for YCCK). Every file is checked to be valid:
``djpeg`` decodes it with no warning, to the same pixels as Pillow
(:func:`validate`).

Use it as a module (``generate(outdir)``) or a script::

    python tests/python/jpeg_matrix.py OUTDIR [--no-validate] [--describe]

For each file OUTDIR gets ``NAME.jpg``, ``NAME.ppm`` (binary P6: Pillow's
``Image.open(...).convert('RGB')``, CMYK/YCCK converted the way Pillow does)
and one ``MANIFEST.tsv`` (``name layout width height components expect``;
``expect`` is ``ok`` everywhere: libjpeg-turbo decodes every file). The same
inputs give the same bytes (the tests check it). Layouts the installed tools
cannot write are skipped with a printed reason (:data:`SKIPPED`).

Needs ``cjpeg``, ``djpeg`` and ``jpegtran`` (Debian/Ubuntu:
``apt-get install libjpeg-turbo-progs``); :func:`missing_tools` says what is
missing, and the tests skip with that message.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from PIL import Image

DATA_IMAGES = Path(__file__).resolve().parents[1] / "data" / "images"
TOOLS = ("cjpeg", "djpeg", "jpegtran")
INSTALL_HINT = "apt-get install libjpeg-turbo-progs"


def missing_tools() -> Optional[str]:
    """``None`` when cjpeg, djpeg and jpegtran are on PATH, else a message naming what is missing."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not missing:
        return None
    return (
        f"JPEG matrix needs libjpeg-turbo's {', '.join(missing)} on PATH "
        f"(Debian/Ubuntu: `{INSTALL_HINT}`)"
    )


# ---------------------------------------------------------------------------------------
# Sources: crops of the bundled photos (chosen on textured, coloured regions).

#: size label -> (bundled file, (left, top, width, height)).
SIZES: Dict[str, Tuple[str, Tuple[int, int, int, int]]] = {
    "1x1": ("china_progressive_420_q90.jpg", (322, 241, 1, 1)),
    "7x13": ("pillow_hopper.png", (61, 37, 7, 13)),
    "17x9": ("china_progressive_420_q90.jpg", (101, 153, 17, 9)),
    "333x17": ("mpl_grace_hopper.jpg", (93, 251, 333, 17)),
    "16x16": ("pillow_hopper.png", (48, 48, 16, 16)),
    "31x33": ("china_progressive_420_q90.jpg", (251, 181, 31, 33)),
    "500x375": ("china_progressive_420_q90.jpg", (70, 26, 500, 375)),
}
#: Every layout is written at these sizes ...
ALWAYS = ("31x33", "500x375")
#: ... and at one of these, chosen by the layout's position (so each size
#: meets about 20 layouts and the total stays near 300 files).
ROTATING = ("7x13", "333x17", "1x1", "17x9", "16x16")


def source_image(size: str) -> Image.Image:
    """The RGB crop for a size label."""
    file, (left, top, w, h) = SIZES[size]
    with Image.open(DATA_IMAGES / file) as im:
        return im.convert("RGB").crop((left, top, left + w, top + h))


def ppm_bytes(img: Image.Image) -> bytes:
    """A binary P6 PPM of an RGB image (written here, byte for byte stable)."""
    assert img.mode == "RGB"
    return f"P6\n{img.width} {img.height}\n255\n".encode() + img.tobytes()


# ---------------------------------------------------------------------------------------
# The segment rewriter.


@dataclass
class Segment:
    """One marker segment. ``body`` excludes the marker and length; for SOS,
    ``entropy`` holds the entropy-coded data that follows (RSTn included)."""

    marker: int
    body: bytes = b""
    entropy: bytes = b""

    def encode(self, fill: int = 0) -> bytes:
        """The segment's bytes, with ``fill`` extra 0xFF fill bytes before its marker."""
        head = b"\xff" * fill + bytes([0xFF, self.marker])
        if self.marker in (0xD8, 0xD9):
            return head
        return head + (len(self.body) + 2).to_bytes(2, "big") + self.body + self.entropy


SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
DHT, DQT, DRI, SOS, COM = 0xC4, 0xDB, 0xDD, 0xDA, 0xFE


class Jpeg:
    """A JPEG as a list of :class:`Segment` (SOI ... EOI), and back.

    Only transformations that keep the file valid under ITU-T T.81 are
    offered: tables/misc segments (DQT, DHT, DRI, COM, APPn) may stand before
    the frame header or before any scan (B.2.4, "tables/misc"), several
    tables may share one DQT/DHT segment, a table must be defined before the
    first scan that uses it and may be redefined afterwards (a component's
    quantisation table is the one installed when its scan is decoded; libjpeg
    latches it there), and any marker may be preceded by 0xFF fill bytes
    (B.1.1.2)."""

    def __init__(self, data: bytes):
        if data[:2] != b"\xff\xd8":
            raise ValueError("not a JPEG (no SOI)")
        self.segments: List[Segment] = [Segment(0xD8)]
        i = 2
        while True:
            if data[i] != 0xFF:
                raise ValueError(f"expected a marker at byte {i}")
            while data[i] == 0xFF:
                i += 1
            m = data[i]
            i += 1
            if m == 0xD9:
                self.segments.append(Segment(0xD9))
                return
            if 0xD0 <= m <= 0xD8 or m == 0x01:
                raise ValueError(f"stray marker FF{m:02X} at byte {i - 2}")
            length = int.from_bytes(data[i : i + 2], "big")
            body = data[i + 2 : i + length]
            i += length
            entropy = b""
            if m == SOS:
                j = i
                while True:
                    k = data.index(b"\xff", j)
                    nxt = data[k + 1]
                    if nxt == 0 or 0xD0 <= nxt <= 0xD7:
                        j = k + 2
                        continue
                    break
                entropy, i = data[i:k], k
            self.segments.append(Segment(m, body, entropy))

    def encode(self, fill: int = 0) -> bytes:
        """The file's bytes; ``fill`` 0xFF fill bytes before every marker after SOI."""
        return b"".join(s.encode(fill if n else 0) for n, s in enumerate(self.segments))

    # -- reading ------------------------------------------------------------------------

    def index(self, marker: int, nth: int = 0) -> int:
        """Position of the ``nth`` segment with this marker."""
        hits = [i for i, s in enumerate(self.segments) if s.marker == marker]
        return hits[nth]

    @property
    def sof(self) -> Segment:
        return next(s for s in self.segments if s.marker in SOF_MARKERS)

    def components(self) -> List[Tuple[int, int, int, int]]:
        """(id, H, V, Tq) per frame component."""
        b = self.sof.body
        return [(b[6 + 3 * k], b[7 + 3 * k] >> 4, b[7 + 3 * k] & 15, b[8 + 3 * k]) for k in range(b[5])]

    def scan_positions(self) -> List[int]:
        return [i for i, s in enumerate(self.segments) if s.marker == SOS]

    @staticmethod
    def scan_components(seg: Segment) -> List[int]:
        """Component ids of one SOS."""
        return [seg.body[1 + 2 * k] for k in range(seg.body[0])]

    def first_scan_with(self, comp_id: int) -> int:
        """Position of the first SOS that codes component ``comp_id``."""
        return next(i for i in self.scan_positions() if comp_id in self.scan_components(self.segments[i]))

    # -- rewriting ----------------------------------------------------------------------

    def split_dqt(self) -> None:
        """One DQT segment per table (libjpeg already writes it so; kept for merged input)."""
        out: List[Segment] = []
        for s in self.segments:
            if s.marker != DQT:
                out.append(s)
                continue
            b, k = s.body, 0
            while k < len(b):
                n = 1 + (128 if b[k] >> 4 else 64)
                out.append(Segment(DQT, b[k : k + n]))
                k += n
        self.segments = out

    def dqt_table(self, table: int) -> int:
        """Position of the (single-table) DQT that defines ``table``."""
        return next(i for i, s in enumerate(self.segments) if s.marker == DQT and s.body[0] & 15 == table)

    def move(self, src: int, before: int) -> None:
        """Move segment ``src`` to just before the segment now at ``before``."""
        seg = self.segments[src]
        target = self.segments[before]
        del self.segments[src]
        self.segments.insert(self.segments.index(target), seg)

    def move_dqt_to_first_use(self) -> None:
        """Each quantisation table moves to just before the first scan of a
        component using it (so some land between scans)."""
        self.split_dqt()
        for table in sorted({tq for _, _, _, tq in self.components()}):
            users = [cid for cid, _, _, tq in self.components() if tq == table]
            first = min(self.first_scan_with(c) for c in users)
            self.move(self.dqt_table(table), first)

    def move_all_before_sof(self, marker: int) -> None:
        """Move every ``marker`` segment that precedes the first scan to just before the SOF."""
        first_sos = self.scan_positions()[0]
        moving = [s for s in self.segments[:first_sos] if s.marker == marker]
        rest = [s for s in self.segments if not any(s is m for m in moving)]
        at = next(i for i, s in enumerate(rest) if s.marker in SOF_MARKERS)
        self.segments = rest[:at] + moving + rest[at:]

    def move_all_after_sof(self, marker: int) -> None:
        """Move every ``marker`` segment before the SOF to just after it."""
        sof_at = next(i for i, s in enumerate(self.segments) if s.marker in SOF_MARKERS)
        moving = [s for s in self.segments[:sof_at] if s.marker == marker]
        rest = [s for s in self.segments if not any(s is m for m in moving)]
        at = next(i for i, s in enumerate(rest) if s.marker in SOF_MARKERS) + 1
        self.segments = rest[:at] + moving + rest[at:]

    def merge_runs(self, marker: int) -> None:
        """Every run of consecutive ``marker`` segments (DQT/DHT) becomes one segment."""
        out: List[Segment] = []
        for s in self.segments:
            if s.marker == marker and out and out[-1].marker == marker and not out[-1].entropy:
                out[-1] = Segment(marker, out[-1].body + s.body)
            else:
                out.append(s)
        self.segments = out

    def insert_before_scans(self, make: Callable[[int], List[Segment]], skip_first: bool = True) -> None:
        """Insert ``make(scan_number)`` before every scan (but the first)."""
        positions = self.scan_positions()[1 if skip_first else 0 :]
        for n, pos in reversed(list(enumerate(positions, start=1 if skip_first else 0))):
            self.segments[pos:pos] = make(n)

    def renumber_components(self, mapping: Dict[int, int]) -> None:
        """Rewrite component ids in SOF and every SOS."""
        sof = self.sof
        b = bytearray(sof.body)
        for k in range(b[5]):
            b[6 + 3 * k] = mapping[b[6 + 3 * k]]
        sof.body = bytes(b)
        for i in self.scan_positions():
            s = self.segments[i]
            b = bytearray(s.body)
            for k in range(b[0]):
                b[1 + 2 * k] = mapping[b[1 + 2 * k]]
            s.body = bytes(b)

    def describe(self) -> str:
        """One line: the marker sequence with frame and scan parameters."""
        names = {0xD8: "SOI", 0xD9: "EOI", DHT: "DHT", DQT: "DQT", DRI: "DRI", COM: "COM"}
        out = []
        for s in self.segments:
            m = s.marker
            if m in SOF_MARKERS:
                comps = " ".join(f"{c}:{h}x{v}q{t}" for c, h, v, t in self.components())
                out.append(f"SOF{m - 0xC0}[{comps}]")
            elif m == SOS:
                b = s.body
                ns = b[0]
                ids = ",".join(f"{b[1 + 2 * k]}" for k in range(ns))
                ss, se, ahal = b[1 + 2 * ns], b[2 + 2 * ns], b[3 + 2 * ns]
                rst = sum(1 for k in range(len(s.entropy) - 1) if s.entropy[k] == 0xFF and 0xD0 <= s.entropy[k + 1] <= 0xD7)
                out.append(f"SOS[{ids} {ss}-{se} {ahal >> 4}/{ahal & 15}{f' rst{rst}' if rst else ''}]")
            elif m == DQT:
                tabs, k, b = [], 0, s.body
                while k < len(b):
                    tabs.append(f"{b[k] & 15}{'/16' if b[k] >> 4 else ''}")
                    k += 1 + (128 if b[k] >> 4 else 64)
                out.append(f"DQT[{','.join(tabs)}]")
            elif m == DHT:
                tabs, k, b = [], 0, s.body
                while k < len(b):
                    tabs.append(f"{'DA'[b[k] >> 4]}{b[k] & 15}")
                    k += 17 + sum(b[k + 1 : k + 17])
                out.append(f"DHT[{','.join(tabs)}]")
            elif m == DRI:
                out.append(f"DRI[{int.from_bytes(s.body[:2], 'big')}]")
            elif 0xE0 <= m <= 0xEF:
                out.append(f"APP{m - 0xE0}")
            else:
                out.append(names.get(m, f"FF{m:02X}"))
        return " ".join(out)


# -- the rewrites the layouts use (each bytes -> bytes) ---------------------------------


def rw_dqt_at_first_use(data: bytes) -> bytes:
    """Each DQT moved to just before the first scan using its table (DQT between scans)."""
    j = Jpeg(data)
    j.move_dqt_to_first_use()
    return j.encode()


def rw_dqt_after_sof(data: bytes) -> bytes:
    """All DQT segments after the SOF (still before the first scan)."""
    j = Jpeg(data)
    j.move_all_after_sof(DQT)
    return j.encode()


def rw_dht_before_sof(data: bytes) -> bytes:
    """The DHT segments of the first scan moved before the SOF."""
    j = Jpeg(data)
    j.move_all_before_sof(DHT)
    return j.encode()


def rw_merged_tables(data: bytes) -> bytes:
    """Consecutive DQT segments merged into one, likewise DHT (several tables per segment)."""
    j = Jpeg(data)
    j.merge_runs(DQT)
    j.merge_runs(DHT)
    return j.encode()


def rw_fill_bytes(data: bytes) -> bytes:
    """Three 0xFF fill bytes before every marker after SOI (also before RST-free scan ends)."""
    return Jpeg(data).encode(fill=3)


def rw_misc_between_scans(data: bytes) -> bytes:
    """A COM and an APP9 segment before every scan but the first."""
    j = Jpeg(data)
    j.insert_before_scans(lambda n: [Segment(COM, f"scan {n}".encode()), Segment(0xE9, b"pixelfeed\0" + bytes(20))])
    return j.encode()


def rw_component_ids_012(data: bytes) -> bytes:
    """Component ids 1,2,3 renumbered 0,1,2 (as some encoders write; JFIF says YCbCr)."""
    j = Jpeg(data)
    j.renumber_components({1: 0, 2: 1, 3: 2})
    return j.encode()


def rw_dqt_redefined_after_use(data: bytes) -> bytes:
    """Sequential, Y scan first: after the Y scan, table 0 is redefined to all
    ones. Later scans do not use table 0; Y was decoded with the old one (a
    decoder that dequantises at the end with the current table gets Y wrong)."""
    j = Jpeg(data)
    j.split_dqt()
    y = j.components()[0][0]
    after_y = j.first_scan_with(y) + 1
    if j.segments[after_y].marker == 0xD9:
        raise ValueError("Y is coded in the last scan")
    j.segments.insert(after_y, Segment(DQT, b"\x00" + b"\x01" * 64))
    return j.encode()


def rw_cmyk_to_ycck(data: bytes) -> bytes:
    """Adobe APP14 transform flag 0 (CMYK) -> 2 (YCCK). The pixels were stored
    so that the YCCK reading gives the photo back (see :func:`make_ycck`)."""
    j = Jpeg(data)
    app14 = next(s for s in j.segments if s.marker == 0xEE and s.body.startswith(b"Adobe"))
    assert app14.body[11] == 0, "expected an Adobe CMYK (transform 0) marker"
    app14.body = app14.body[:11] + b"\x02" + app14.body[12:]
    return j.encode()


# ---------------------------------------------------------------------------------------
# Layouts.

SEQ = {  # sequential (baseline) multi-scan scripts: one line per scan, component indexes
    "y_cb_cr": "0;\n1;\n2;\n",
    "cb_cr_y": "1;\n2;\n0;\n",
    "cr_y_cb": "2;\n0;\n1;\n",
    "cr_cb_y": "2;\n1;\n0;\n",
    "y_cbcr": "0;\n1 2;\n",
    "ycb_cr": "0 1;\n2;\n",
    "cbcr_y": "1 2;\n0;\n",
    "cr_ycb": "2;\n0 1;\n",
}
PROG = {  # progressive scripts ("components: Ss Se Ah Al;")
    "spectral": "0 1 2: 0 0 0 0;\n0: 1 5 0 0;\n2: 1 63 0 0;\n1: 1 63 0 0;\n0: 6 63 0 0;\n",
    "successive": (
        "0 1 2: 0 0 0 2;\n0: 1 63 0 3;\n1: 1 63 0 1;\n2: 1 63 0 1;\n0 1 2: 0 0 2 1;\n"
        "0: 1 63 3 2;\n0: 1 63 2 1;\n0 1 2: 0 0 1 0;\n0: 1 63 1 0;\n2: 1 63 1 0;\n1: 1 63 1 0;\n"
    ),
    "dc_per_component": "0: 0 0 0 0;\n1: 0 0 0 0;\n2: 0 0 0 0;\n0: 1 63 0 0;\n1: 1 63 0 0;\n2: 1 63 0 0;\n",
    "chroma_first": (
        "2: 0 0 0 1;\n1: 0 0 0 1;\n0: 0 0 0 1;\n2: 1 63 0 0;\n1: 1 63 0 0;\n0: 1 9 0 0;\n"
        "0 1 2: 0 0 1 0;\n0: 10 63 0 0;\n"
    ),
    "dc_ycb_then_cr": "0 1: 0 0 0 0;\n2: 0 0 0 0;\n1: 1 63 0 0;\n0: 1 63 0 0;\n2: 1 63 0 0;\n",
    # Refinement stops early (DC at Al=1, luma AC at Al=1): libjpeg's block
    # smoothing estimates the missing bits.
    "unrefined": "0 1 2: 0 0 0 1;\n0: 1 63 0 2;\n1: 1 63 0 0;\n2: 1 63 0 0;\n0: 1 63 2 1;\n",
    # Luma AC never coded past index 9.
    "ac_band_missing": "0 1 2: 0 0 0 0;\n0: 1 9 0 0;\n1: 1 63 0 0;\n2: 1 63 0 0;\n",
}
GRAY_SEQ = "0;\n"
CMYK_SEQ = "0;\n1;\n2;\n3;\n"
CMYK_SEQ_KCMY = "3;\n0;\n1;\n2;\n"

#: Quantisation tables for -qtables: three tables, some entries over 255 (16-bit).
QTABLES_3 = "\n".join(
    " ".join(str(v) for v in row)
    for row in (
        [min(999, 2 + 3 * k) for k in range(64)],
        [min(999, 5 + 11 * k) for k in range(64)],
        [min(999, 4 + 7 * k) for k in range(64)],
    )
)


@dataclass(frozen=True)
class Layout:
    """How to make one layout.

    ``tool``: ``cjpeg`` (from the RGB crop), ``cmyk`` (Pillow writes a CMYK
    JPEG, then ``jpegtran args`` if any) or ``ycck`` (see :func:`make_ycck`).
    ``scans`` is a -scans script, ``rewrite`` a post-step on the bytes,
    ``check`` a structural assertion on the result (that the layout really is
    what its name says)."""

    name: str
    what: str
    tool: str = "cjpeg"
    args: Tuple[str, ...] = ()
    scans: Optional[str] = None
    rewrite: Optional[Callable[[bytes], bytes]] = None
    check: Optional[Callable[[Jpeg], bool]] = None
    pillow: Dict[str, object] = field(default_factory=dict)


def _sampling(*hv: Tuple[int, int]) -> Callable[[Jpeg], bool]:
    return lambda j: [(h, v) for _, h, v, _ in j.components()] == list(hv)


def _scans(*orders: Sequence[int]) -> Callable[[Jpeg], bool]:
    """The scans' component ids, in order (progressive: each scan listed)."""
    return lambda j: [Jpeg.scan_components(j.segments[i]) for i in j.scan_positions()] == [list(o) for o in orders]


def _dqt_between_scans(j: Jpeg) -> bool:
    first = j.scan_positions()[0]
    return any(s.marker == DQT for s in j.segments[first:])


def _dht_between_scans(j: Jpeg) -> bool:
    first = j.scan_positions()[0]
    return any(s.marker == DHT for s in j.segments[first:])


def _has_rst(j: Jpeg) -> bool:
    """A nonzero restart interval (a one-MCU image has no RSTn to write)."""
    return any(v > 0 for v in _dri_values(j))


def _dri_values(j: Jpeg) -> List[int]:
    return [int.from_bytes(s.body[:2], "big") for s in j.segments if s.marker == DRI]


def _sof(n: int) -> Callable[[Jpeg], bool]:
    return lambda j: j.sof.marker == 0xC0 + n


def _all(*checks: Callable[[Jpeg], bool]) -> Callable[[Jpeg], bool]:
    return lambda j: all(c(j) for c in checks)


def _has_16bit_dqt(j: Jpeg) -> bool:
    return any(s.marker == DQT and any(b >> 4 for b in dqt_entries(s.body)) for s in j.segments)


def dqt_entries(body: bytes) -> List[int]:
    out, k = [], 0
    while k < len(body):
        out.append(body[k])
        k += 1 + (128 if body[k] >> 4 else 64)
    return out


def _adobe_transform(n: int) -> Callable[[Jpeg], bool]:
    return lambda j: any(s.marker == 0xEE and s.body.startswith(b"Adobe") and s.body[11] == n for s in j.segments)


SAMPLINGS = {  # name -> (-sample argument, expected (H, V) per component)
    "444": ("1x1", ((1, 1), (1, 1), (1, 1))),
    "422": ("2x1", ((2, 1), (1, 1), (1, 1))),
    "440": ("1x2", ((1, 2), (1, 1), (1, 1))),
    "420": ("2x2", ((2, 2), (1, 1), (1, 1))),
    "411": ("4x1", ((4, 1), (1, 1), (1, 1))),
    "410": ("4x2", ((4, 2), (1, 1), (1, 1))),
    "h3": ("3x1", ((3, 1), (1, 1), (1, 1))),
    "v3": ("1x3", ((1, 3), (1, 1), (1, 1))),
    "y1_c22": ("1x1,2x2,2x2", ((1, 1), (2, 2), (2, 2))),
    "y1_c21": ("1x1,2x1,2x1", ((1, 1), (2, 1), (2, 1))),
    "y1_c12": ("1x1,1x2,1x2", ((1, 1), (1, 2), (1, 2))),
    "y21_cb12_cr11": ("2x1,1x2,1x1", ((2, 1), (1, 2), (1, 1))),
    "y22_cb11_cr22": ("2x2,1x1,2x2", ((2, 2), (1, 1), (2, 2))),
    "y14_cb12_cr11": ("1x4,1x2,1x1", ((1, 4), (1, 2), (1, 1))),
    "y41_cb21_cr11": ("4x1,2x1,1x1", ((4, 1), (2, 1), (1, 1))),
}


def _sample(name: str) -> Tuple[Tuple[str, ...], Callable[[Jpeg], bool]]:
    arg, hv = SAMPLINGS[name]
    return ("-sample", arg), _sampling(*hv)


def _layouts() -> List[Layout]:
    L: List[Layout] = []

    # Baseline, one interleaved scan, every sampling.
    for s in SAMPLINGS:
        args, chk = _sample(s)
        L.append(Layout(f"base_{s}", f"baseline interleaved, -sample {SAMPLINGS[s][0]}", args=args,
                        check=_all(chk, _sof(0), _scans([1, 2, 3]))))

    # Baseline, one component per scan (non-interleaved), several orders and samplings.
    for s in ("444", "422", "440", "420", "411", "410", "h3", "v3", "y1_c22"):
        args, chk = _sample(s)
        L.append(Layout(f"noni_y_cb_cr_{s}", f"baseline non-interleaved Y,Cb,Cr, -sample {SAMPLINGS[s][0]}",
                        args=args, scans=SEQ["y_cb_cr"], check=_all(chk, _sof(0), _scans([1], [2], [3]))))
    for order, want in (("cb_cr_y", ([2], [3], [1])), ("cr_y_cb", ([3], [1], [2])), ("cr_cb_y", ([3], [2], [1]))):
        for s in ("444", "420"):
            args, chk = _sample(s)
            L.append(Layout(f"noni_{order}_{s}", f"baseline non-interleaved {order}, -sample {SAMPLINGS[s][0]}; "
                            "luma Huffman tables defined between scans", args=args, scans=SEQ[order],
                            check=_all(chk, _scans(*want), _dht_between_scans)))
    L.append(Layout("noni_y_cb_cr_y44", "baseline non-interleaved Y,Cb,Cr with Y sampled 4x4 (too many blocks "
                    "to interleave)", args=("-sample", "4x4"), scans=SEQ["y_cb_cr"],
                    check=_all(_sampling((4, 4), (1, 1), (1, 1)), _scans([1], [2], [3]))))

    # Partially interleaved.
    for order, want, samplings in (
        ("y_cbcr", ([1], [2, 3]), ("420", "422", "440")),
        ("ycb_cr", ([1, 2], [3]), ("420", "444")),
        ("cbcr_y", ([2, 3], [1]), ("420",)),
        ("cr_ycb", ([3], [1, 2]), ("420",)),
    ):
        for s in samplings:
            args, chk = _sample(s)
            L.append(Layout(f"part_{order}_{s}", f"baseline partially interleaved {order}, -sample {SAMPLINGS[s][0]}",
                            args=args, scans=SEQ[order], check=_all(chk, _scans(*want))))

    # Progressive: the standard script at every sampling, custom scripts.
    for s in ("420", "444", "422", "440", "411", "h3", "v3", "y1_c22"):
        args, chk = _sample(s)
        L.append(Layout(f"prog_std_{s}", f"progressive, standard script, -sample {SAMPLINGS[s][0]}",
                        args=("-progressive",) + args, check=_all(chk, _sof(2))))
    for script in PROG:
        L.append(Layout(f"prog_{script}_420", f"progressive, custom script '{script}', 4:2:0",
                        args=("-sample", "2x2"), scans=PROG[script], check=_sof(2)))
    L.append(Layout("prog_dc_per_component_y44", "progressive, per-component DC scans, Y sampled 4x4",
                    args=("-sample", "4x4"), scans=PROG["dc_per_component"],
                    check=_all(_sof(2), _sampling((4, 4), (1, 1), (1, 1)))))

    # Restart intervals.
    for name, rst, s, scans, extra in (
        ("rst1_420", "1B", "420", None, ()),
        ("rst3_422", "3B", "422", None, ()),
        ("rst7_420", "7B", "420", None, ()),
        ("rst_row_440", "1", "440", None, ()),
        ("noni_rst1_420", "1B", "420", SEQ["y_cb_cr"], ()),
        ("noni_rst3_444", "3B", "444", SEQ["y_cb_cr"], ()),
        ("noni_rst7_420", "7B", "420", SEQ["y_cb_cr"], ()),
        ("noni_rst_row_420", "1", "420", SEQ["y_cb_cr"], ()),  # DRI differs per scan
        ("noni_rst5_cb_cr_y_420", "5B", "420", SEQ["cb_cr_y"], ()),
        ("part_rst3_y_cbcr_420", "3B", "420", SEQ["y_cbcr"], ()),
        ("prog_rst1_420", "1B", "420", None, ("-progressive",)),
        ("prog_rst7_444", "7B", "444", None, ("-progressive",)),
    ):
        args, chk = _sample(s)
        L.append(Layout(name, f"restart interval {rst} ({'rows' if not rst.endswith('B') else 'MCUs'}), "
                        f"-sample {SAMPLINGS[s][0]}{', scans ' + repr(scans) if scans else ''} {' '.join(extra)}",
                        args=extra + args + ("-restart", rst), scans=scans, check=_all(chk, _has_rst)))

    # Optimised Huffman tables (multi-scan: tables redefined before each scan).
    L.append(Layout("opt_420", "optimised Huffman tables, 4:2:0", args=("-optimize", "-sample", "2x2")))
    L.append(Layout("noni_opt_420", "non-interleaved 4:2:0 with optimised Huffman tables (DHT redefined between scans)",
                    args=("-optimize", "-sample", "2x2"), scans=SEQ["y_cb_cr"], check=_dht_between_scans))

    # Quantisation tables.
    L.append(Layout("q16_420", "quality 3: 16-bit quantisation tables (SOF1), 4:2:0",
                    args=("-quality", "3", "-sample", "2x2"), check=_all(_sof(1), _has_16bit_dqt)))
    L.append(Layout("q16_prog_420", "quality 3, progressive: 16-bit quantisation tables (SOF2)",
                    args=("-quality", "3", "-progressive", "-sample", "2x2"), check=_all(_sof(2), _has_16bit_dqt)))
    L.append(Layout("q16_noni_420", "quality 3, non-interleaved: 16-bit tables (SOF1), one scan per component",
                    args=("-quality", "3", "-sample", "2x2"), scans=SEQ["y_cb_cr"], check=_all(_sof(1), _has_16bit_dqt)))
    L.append(Layout("q8_baseline_q5_420", "-baseline -quality 5: tables clamped to 8 bits (SOF0)",
                    args=("-baseline", "-quality", "5", "-sample", "2x2"), check=_all(_sof(0))))
    L.append(Layout("qt3_mixed16_444", "three quantisation tables (-qslots 0,1,2), some 16-bit, 4:4:4",
                    args=("-qtables", "@QTABLES", "-qslots", "0,1,2", "-sample", "1x1"),
                    check=_all(_has_16bit_dqt, lambda j: [t for *_, t in j.components()] == [0, 1, 2])))

    # Grayscale.
    L.append(Layout("gray_base", "grayscale baseline", args=("-grayscale",), check=lambda j: len(j.components()) == 1))
    L.append(Layout("gray_prog", "grayscale progressive", args=("-grayscale", "-progressive")))
    L.append(Layout("gray_rst1", "grayscale, restart every MCU", args=("-grayscale", "-restart", "1B"), check=_has_rst))
    L.append(Layout("gray_q16", "grayscale, quality 3 (16-bit table, SOF1)", args=("-grayscale", "-quality", "3"),
                    check=_all(_sof(1), _has_16bit_dqt)))
    L.append(Layout("gray_22", "grayscale with sampling factors 2x2 declared (single component)",
                    args=("-grayscale", "-sample", "2x2"), check=_sampling((2, 2))))

    # RGB colourspace (component ids 'R','G','B', Adobe transform 0).
    L.append(Layout("rgb_base", "RGB colourspace, baseline", args=("-rgb",),
                    check=lambda j: [c for c, *_ in j.components()] == [82, 71, 66]))
    L.append(Layout("rgb_prog", "RGB colourspace, progressive", args=("-rgb", "-progressive")))
    L.append(Layout("rgb_noni", "RGB colourspace, one scan per component", args=("-rgb",), scans=SEQ["y_cb_cr"]))
    L.append(Layout("rgb_sub_22_11_11", "RGB colourspace with R sampled 2x2", args=("-rgb", "-sample", "2x2,1x1,1x1"),
                    check=_sampling((2, 2), (1, 1), (1, 1))))

    # Arithmetic coding (libjpeg-turbo decodes it; the server may refuse it by name).
    L.append(Layout("arith_420", "arithmetic coding (SOF9), 4:2:0", args=("-arithmetic", "-sample", "2x2"), check=_sof(9)))
    L.append(Layout("arith_prog_420", "arithmetic coding, progressive (SOF10)", args=("-arithmetic", "-progressive"),
                    check=_sof(10)))

    # CMYK (Pillow writes it, Adobe transform 0, ids C,M,Y,K) and YCCK.
    L.append(Layout("cmyk_base", "CMYK (Pillow), baseline", tool="cmyk", check=_adobe_transform(0)))
    L.append(Layout("cmyk_c22", "CMYK (Pillow subsampling=2: C sampled 2x2)", tool="cmyk", pillow={"subsampling": 2},
                    check=_sampling((2, 2), (1, 1), (1, 1), (1, 1))))
    L.append(Layout("cmyk_prog", "CMYK, progressive (jpegtran)", tool="cmyk", args=("-progressive",), check=_sof(2)))
    L.append(Layout("cmyk_rst3", "CMYK, restart every 3 MCUs (jpegtran)", tool="cmyk", args=("-restart", "3B"),
                    check=_has_rst))
    L.append(Layout("cmyk_noni_kcmy", "CMYK, one scan per component, K first (jpegtran -scans)", tool="cmyk",
                    scans=CMYK_SEQ_KCMY, check=_scans([75], [67], [77], [89])))
    L.append(Layout("ycck_base", "YCCK (Adobe transform 2; rewriter on a Pillow CMYK file)", tool="ycck",
                    check=_adobe_transform(2)))

    # Segment rewrites (the tools never write these).
    L.append(Layout("rw_dqt_between_scans_noni_420", "non-interleaved Y,Cb,Cr 4:2:0; DQT for chroma moved after the Y scan",
                    args=("-sample", "2x2"), scans=SEQ["y_cb_cr"], rewrite=rw_dqt_at_first_use, check=_dqt_between_scans))
    L.append(Layout("rw_dqt_between_scans_noni_444", "non-interleaved Y,Cb,Cr 4:4:4; DQT for chroma moved after the Y scan",
                    args=("-sample", "1x1"), scans=SEQ["y_cb_cr"], rewrite=rw_dqt_at_first_use, check=_dqt_between_scans))
    L.append(Layout("rw_dqt_between_scans_cb_cr_y_444", "non-interleaved Cb,Cr,Y 4:4:4; luma DQT (and DHT) between scans",
                    args=("-sample", "1x1"), scans=SEQ["cb_cr_y"], rewrite=rw_dqt_at_first_use,
                    check=_all(_dqt_between_scans, _dht_between_scans)))
    L.append(Layout("rw_dqt_between_scans_prog_420", "progressive, per-component DC; chroma DQT moved after the first scan",
                    args=("-sample", "2x2"), scans=PROG["dc_per_component"], rewrite=rw_dqt_at_first_use,
                    check=_dqt_between_scans))
    L.append(Layout("rw_dqt_redefined_after_use_444", "non-interleaved 4:4:4; table 0 redefined after the Y scan",
                    args=("-sample", "1x1"), scans=SEQ["y_cb_cr"], rewrite=rw_dqt_redefined_after_use,
                    check=_dqt_between_scans))
    L.append(Layout("rw_dqt_after_sof_420", "DQT segments after the SOF", args=("-sample", "2x2"), rewrite=rw_dqt_after_sof,
                    check=lambda j: j.segments[j.index(DQT) - 1].marker in SOF_MARKERS))
    L.append(Layout("rw_dht_before_sof_420", "DHT segments before the SOF", args=("-sample", "2x2"),
                    rewrite=rw_dht_before_sof, check=lambda j: j.index(DHT) < j.segments.index(j.sof)))
    L.append(Layout("rw_merged_tables_420", "all DQT tables in one segment, all DHT tables in one segment",
                    args=("-sample", "2x2"), rewrite=rw_merged_tables,
                    check=lambda j: sum(s.marker == DQT for s in j.segments) == 1 and sum(s.marker == DHT for s in j.segments) == 1))
    L.append(Layout("rw_merged_tables_prog_420", "progressive, consecutive DHT segments merged", args=("-progressive",),
                    rewrite=rw_merged_tables))
    L.append(Layout("rw_fill_bytes_420", "0xFF fill bytes before every marker", args=("-sample", "2x2", "-restart", "2B"),
                    rewrite=rw_fill_bytes))
    L.append(Layout("rw_fill_bytes_prog_420", "progressive, 0xFF fill bytes before every marker", args=("-progressive",),
                    rewrite=rw_fill_bytes))
    L.append(Layout("rw_misc_between_scans_noni_420", "non-interleaved 4:2:0; COM and APP9 segments between scans",
                    args=("-sample", "2x2"), scans=SEQ["y_cb_cr"], rewrite=rw_misc_between_scans))
    L.append(Layout("rw_misc_between_scans_prog_420", "progressive; COM and APP9 segments between scans",
                    args=("-progressive",), rewrite=rw_misc_between_scans))
    L.append(Layout("rw_component_ids_012_420", "component ids 0,1,2 (JFIF YCbCr)", args=("-sample", "2x2"),
                    rewrite=rw_component_ids_012, check=lambda j: [c for c, *_ in j.components()] == [0, 1, 2]))
    L.append(Layout("rw_component_ids_012_prog_420", "progressive, component ids 0,1,2", args=("-progressive",),
                    rewrite=rw_component_ids_012, check=lambda j: [c for c, *_ in j.components()] == [0, 1, 2]))
    return L


LAYOUTS: List[Layout] = _layouts()

#: Layouts the installed tools cannot write, with the reason (printed by generate()).
SKIPPED: Dict[str, str] = {
    "12-bit samples (SOF1/SOF2, P=12)": "cjpeg 2.1 writes 8-bit samples only (libjpeg-turbo 3.0 adds -precision 12)",
    "lossless (SOF3)": "cjpeg 2.1 has no -lossless (libjpeg-turbo 3.0 adds it)",
    "hierarchical (SOF5-SOF7)": "no encoder in libjpeg-turbo, and libjpeg-turbo does not decode it",
    "DNL (height 0 in the SOF, set after the first scan)": "no encoder writes it and libjpeg-turbo refuses it "
                                                           "('DNL not supported'), so it is not an 'ok' file",
}


def sizes_for(index: int) -> Tuple[str, ...]:
    """The size labels layout number ``index`` is written at."""
    return ALWAYS + (ROTATING[index % len(ROTATING)],)


# ---------------------------------------------------------------------------------------
# Generation.


@dataclass(frozen=True)
class Case:
    name: str
    layout: Layout
    size: str


def plan() -> List[Case]:
    """Every file the matrix holds (no tool runs): ``LAYOUT__SIZE``."""
    return [Case(f"{lay.name}__{size}", lay, size) for n, lay in enumerate(LAYOUTS) for size in sizes_for(n)]


def layout_names() -> List[str]:
    return [lay.name for lay in LAYOUTS]


#: cjpeg's notice when asked for tables with entries over 255: exactly what the
#: 16-bit layouts want, so not an error.
EXPECTED_STDERR = ("Caution: quantization tables are too coarse for baseline JPEG",)


def _run(cmd: Sequence[str], data: bytes) -> bytes:
    p = subprocess.run(list(cmd), input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    noise = [ln for ln in p.stderr.decode(errors="replace").splitlines() if ln.strip() and ln.strip() not in EXPECTED_STDERR]
    if p.returncode != 0 or noise:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {p.returncode}): {p.stderr.decode(errors='replace').strip()}")
    return p.stdout


def _pillow_jpeg(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def make_ycck(rgb: Image.Image) -> bytes:
    """A YCCK JPEG of the photo. Pillow writes a CMYK file whose stored (Adobe
    inverted) samples are (Y, Cb, Cr) of the photo's CMY-as-RGB and K = 255,
    then the APP14 transform flag is set to 2: libjpeg turns YCC into
    RGB, stores 255 - RGB as C, M, Y, and Pillow's inverted reading of that
    gives the photo's CMYK (K = 0) back."""
    cmyk = rgb.convert("CMYK")
    c, m, y, k = cmyk.split()
    ycc = Image.merge("RGB", (c, m, y)).convert("YCbCr")
    # Pillow stores 255 - value for CMYK JPEGs; we want ycc stored, and K stored as 255 - k.
    inv = [ch.point(lambda v: 255 - v) for ch in ycc.split()]
    q = Image.merge("CMYK", (*inv, k))
    return rw_cmyk_to_ycck(_pillow_jpeg(q))


def encode(case: Case, workdir: Path) -> bytes:
    """The JPEG bytes of one case (runs the tools)."""
    lay = case.layout
    img = source_image(case.size)
    if lay.tool == "cjpeg":
        args = [a.replace("@QTABLES", str(workdir / "qtables.txt")) for a in lay.args]
        cmd = ["cjpeg", *args]
        if lay.scans:
            cmd += ["-scans", str(_script(workdir, lay.scans))]
        data = _run(cmd, ppm_bytes(img))
    elif lay.tool == "cmyk":
        data = _pillow_jpeg(img.convert("CMYK"), **lay.pillow)
        tran = list(lay.args)
        if lay.scans:
            tran += ["-scans", str(_script(workdir, lay.scans))]
        if tran:
            data = _run(["jpegtran", *tran], data)
    elif lay.tool == "ycck":
        data = make_ycck(img)
    else:
        raise ValueError(lay.tool)
    if lay.rewrite:
        data = lay.rewrite(data)
    if lay.check and not lay.check(Jpeg(data)):
        raise AssertionError(f"{case.name}: not the layout its name says: {Jpeg(data).describe()}")
    return data


def _script(workdir: Path, text: str) -> Path:
    """The -scans file for a script (written by :func:`generate` before any tool runs)."""
    return workdir / f"scans_{hashlib.sha1(text.encode()).hexdigest()[:12]}.txt"


def pillow_decode(data: bytes) -> Image.Image:
    """Pillow's RGB decode of a JPEG; any warning raised as an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")


def generate(outdir: Path, workers: Optional[int] = None, verbose: bool = True) -> List[Dict[str, str]]:
    """Write every case into ``outdir`` (created); returns the manifest rows."""
    why = missing_tools()
    if why:
        raise RuntimeError(why)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    if verbose:
        for what, reason in SKIPPED.items():
            print(f"jpeg_matrix: skipped layout {what}: {reason}", file=sys.stderr)
    cases = plan()
    with tempfile.TemporaryDirectory(prefix="jpeg_matrix_") as tmp:
        work = Path(tmp)
        (work / "qtables.txt").write_text(QTABLES_3 + "\n")
        for lay in LAYOUTS:
            if lay.scans:
                _script(work, lay.scans).write_text(lay.scans)

        def one(case: Case) -> Dict[str, str]:
            data = encode(case, work)
            img = pillow_decode(data)
            (outdir / f"{case.name}.jpg").write_bytes(data)
            (outdir / f"{case.name}.ppm").write_bytes(ppm_bytes(img))
            comps = len(Jpeg(data).components())
            return {"name": case.name, "layout": case.layout.name, "width": str(img.width),
                    "height": str(img.height), "components": str(comps), "expect": "ok"}

        with ThreadPoolExecutor(max_workers=workers or max(2, os.cpu_count() or 2)) as pool:
            rows = list(pool.map(one, cases))
    cols = ["name", "layout", "width", "height", "components", "expect"]
    text = "\t".join(cols) + "\n" + "".join("\t".join(r[c] for c in cols) + "\n" for r in rows)
    (outdir / "MANIFEST.tsv").write_text(text)
    return rows


def read_manifest(outdir: Path) -> List[Dict[str, str]]:
    lines = (Path(outdir) / "MANIFEST.tsv").read_text().splitlines()
    cols = lines[0].split("\t")
    return [dict(zip(cols, line.split("\t"))) for line in lines[1:]]


def read_ppm(data: bytes) -> Tuple[int, int, bytes]:
    """(width, height, RGB bytes) of a P6 file as :func:`ppm_bytes` writes it (or djpeg)."""
    parts = data.split(maxsplit=4)
    assert parts[0] == b"P6" and parts[3] == b"255", "not an 8-bit P6 PPM"
    w, h = int(parts[1]), int(parts[2])
    return w, h, data[len(data) - 3 * w * h :]


def validate(outdir: Path, workers: Optional[int] = None) -> List[str]:
    """Check every file: djpeg decodes it with no warning (rc 0, nothing on
    stderr) to the same pixels as Pillow (``NAME.ppm``). Returns problems."""

    def one(row: Dict[str, str]) -> Optional[str]:
        name = row["name"]
        jpg = (Path(outdir) / f"{name}.jpg").read_bytes()
        cmyk = row["components"] == "4"
        # CMYK/YCCK: libjpeg has no CMYK->RGB conversion; djpeg's PPM writer converts
        # (the same formula as Pillow's, up to rounding). Others: -rgb (gray too).
        cmd = ["djpeg"] if cmyk else ["djpeg", "-rgb"]
        p = subprocess.run(cmd, input=jpg, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if p.returncode != 0 or p.stderr:
            return f"{name}: djpeg rc {p.returncode}: {p.stderr.decode(errors='replace').strip()}"
        w, h, dj = read_ppm(p.stdout)
        pw, ph, pil = read_ppm((Path(outdir) / f"{name}.ppm").read_bytes())
        if (w, h) != (pw, ph) or (w, h) != (int(row["width"]), int(row["height"])):
            return f"{name}: djpeg {w}x{h}, Pillow {pw}x{ph}, manifest {row['width']}x{row['height']}"
        try:
            again = pillow_decode(jpg)
        except Exception as e:  # noqa: BLE001
            return f"{name}: Pillow: {e}"
        if ppm_bytes(again) != (Path(outdir) / f"{name}.ppm").read_bytes():
            return f"{name}: Pillow decodes differently from NAME.ppm"
        worst = max((abs(a - b) for a, b in zip(dj, pil)), default=0)
        # Block smoothing (progressive files refined short of full precision)
        # changed after libjpeg-turbo 2.1, which a distribution's djpeg may be;
        # Pillow bundles 3.x, the version pixelfeed builds.
        smoothed = "unrefined" in name
        allowed = 1 if cmyk else 2 if smoothed else 0
        if worst > allowed:
            return f"{name}: djpeg and Pillow differ by up to {worst} (allowed {allowed})"
        return None

    rows = read_manifest(outdir)
    with ThreadPoolExecutor(max_workers=workers or max(2, os.cpu_count() or 2)) as pool:
        return [p for p in pool.map(one, rows) if p]


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--no-validate", action="store_true", help="skip the djpeg/Pillow agreement check")
    ap.add_argument("--describe", action="store_true", help="print each file's marker sequence")
    a = ap.parse_args(argv)
    why = missing_tools()
    if why:
        print(f"jpeg_matrix: {why}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rows = generate(a.outdir)
    t1 = time.perf_counter()
    print(f"jpeg_matrix: {len(rows)} files, {len(LAYOUTS)} layouts in {t1 - t0:.1f} s -> {a.outdir}")
    if a.describe:
        for r in rows:
            print(f"{r['name']}\t{Jpeg((a.outdir / (r['name'] + '.jpg')).read_bytes()).describe()}")
    if not a.no_validate:
        problems = validate(a.outdir)
        print(f"jpeg_matrix: validated in {time.perf_counter() - t1:.1f} s: "
              f"{len(rows) - len(problems)}/{len(rows)} decode identically in djpeg and Pillow, no warning")
        for p in problems:
            print(f"  INVALID {p}", file=sys.stderr)
        if problems:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
