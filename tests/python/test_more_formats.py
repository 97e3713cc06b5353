"""WebP, GIF, BMP and TIFF (issue #15), every variant compared with Pillow.

Each file is written here, from a bundled photo, by Pillow (or by tifffile
for TIFF layouts Pillow does not write, or by hand for BMP layouts no
library here writes); Pillow decodes it for the reference. Each goes
through a uint8 HWC spec and the float imagenet preset; mean |diff| on the
0–255 scale must stay within 1.0 for lossy variants and 0.5 for lossless
ones. Orientation (WebP EXIF, TIFF Orientation tag) is checked to really
rotate, and the hostile variants of each format are rows with errors.
"""

from __future__ import annotations

import io
import struct
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
from PIL import Image

from pfhelpers import DATA_IMAGES, check_against_pillow, mean_abs_diff, pillow_reference, run_named

UINT8_HWC = {"preset": "imagenet", "dtype": "uint8", "layout": "hwc", "normalize": None}
IMAGENET = {"preset": "imagenet"}
SPECS = [UINT8_HWC, IMAGENET]
SPEC_IDS = ["uint8", "imagenet"]


def _photo(size: Tuple[int, int] = (160, 120)) -> Image.Image:
    """A non-square RGB photo (Grace Hopper), so orientation and size errors show."""
    return Image.open(DATA_IMAGES / "mpl_grace_hopper.jpg").convert("RGB").resize(size, Image.BILINEAR)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _with_alpha(img: Image.Image) -> Image.Image:
    """``img`` with a horizontal alpha ramp (colour under alpha 0 kept)."""
    rgba = img.convert("RGBA")
    ramp = np.tile(np.linspace(0, 255, img.width, dtype=np.uint8), (img.height, 1))
    rgba.putalpha(Image.fromarray(ramp, "L"))
    return rgba


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


# --- WebP -------------------------------------------------------------------


def _animated_webp(lossless: bool) -> bytes:
    a = _photo()
    b = a.transpose(Image.FLIP_LEFT_RIGHT)
    return _save(a, "WEBP", save_all=True, append_images=[b], duration=100, lossless=lossless, quality=90)


WEBP: Dict[str, Tuple[Callable[[], bytes], float]] = {
    "lossy": (lambda: _save(_photo(), "WEBP", quality=90), 1.0),
    "lossy_q50": (lambda: _save(_photo(), "WEBP", quality=50), 1.0),
    "lossy_alpha": (lambda: _save(_with_alpha(_photo()), "WEBP", quality=90), 1.0),
    "lossless": (lambda: _save(_photo(), "WEBP", lossless=True), 0.5),
    "lossless_alpha": (lambda: _save(_with_alpha(_photo()), "WEBP", lossless=True, exact=True), 0.5),
    "gray_lossless": (lambda: _save(_photo().convert("L"), "WEBP", lossless=True), 0.5),
    "odd_size_lossy": (lambda: _save(_photo((161, 97)), "WEBP", quality=90), 1.0),
    "extended_exif_1": (lambda: _save(_photo(), "WEBP", quality=90, exif=_exif(1)), 1.0),
    "animated_lossy": (lambda: _animated_webp(False), 1.0),
    "animated_lossless": (lambda: _animated_webp(True), 0.5),
}

# --- GIF --------------------------------------------------------------------


def _gif_descriptor(data: bytes) -> int:
    """Offset of the first image descriptor (``,``): after the global colour
    table and any extension blocks."""
    pos = 13
    if data[10] & 0x80:
        pos += 3 << ((data[10] & 7) + 1)
    while data[pos] == 0x21:  # extension: label, then sub-blocks
        pos += 2
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    assert data[pos] == 0x2C, "no image descriptor"
    return pos


GIF: Dict[str, Tuple[Callable[[], bytes], float]] = {
    "adaptive_palette": (lambda: _save(_photo().quantize(256), "GIF"), 0.5),
    "16_colours": (lambda: _save(_photo().quantize(16), "GIF"), 0.5),
    "gray": (lambda: _save(_photo().convert("L"), "GIF"), 0.5),
    "interlaced": (lambda: _save(_photo().quantize(256), "GIF", interlace=True), 0.5),
    "transparent_index": (lambda: _save(_photo().quantize(64), "GIF", transparency=3), 0.5),
    "gif87a": (lambda: _save(_photo().quantize(32), "GIF", version="GIF87a"), 0.5),
    "animated": (
        lambda: _save(
            _photo().quantize(64),
            "GIF",
            save_all=True,
            append_images=[_photo().transpose(Image.FLIP_LEFT_RIGHT).quantize(64)],
            duration=100,
        ),
        0.5,
    ),
}

# --- BMP --------------------------------------------------------------------


def _bmp(bits: int, pixels: bytes, width: int, height: int, palette: bytes = b"", compression: int = 0,
         masks: bytes = b"", top_down: bool = False) -> bytes:
    """A BITMAPINFOHEADER BMP around stored ``pixels`` (bottom row first unless ``top_down``)."""
    info_size = 40
    offset = 14 + info_size + len(masks) + len(palette)
    header = struct.pack("<IiiHHIIiiII", info_size, width, -height if top_down else height, 1, bits, compression,
                         len(pixels), 2835, 2835, len(palette) // 4, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + header + masks + palette + pixels


def _bmp_rows(arr: np.ndarray, encode_row: Callable[[np.ndarray], bytes], top_down: bool) -> bytes:
    """Rows of ``arr`` in BMP order, each padded to 4 bytes."""
    order = range(arr.shape[0]) if top_down else range(arr.shape[0] - 1, -1, -1)
    out = b""
    for y in order:
        line = encode_row(arr[y])
        out += line + b"\0" * (-len(line) % 4)
    return out


def _bmp16(mode565: bool) -> bytes:
    """16-bit BMP, 5-5-5 (BI_RGB) or 5-6-5 (BI_BITFIELDS)."""
    arr = np.asarray(_photo()).astype(np.uint16)
    r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
    if mode565:
        v = (r >> 3) << 11 | (g >> 2) << 5 | (b >> 3)
        masks = struct.pack("<III", 0xF800, 0x07E0, 0x001F)
    else:
        v = (r >> 3) << 10 | (g >> 3) << 5 | (b >> 3)
        masks = b""
    rows = _bmp_rows(v, lambda row: row.astype("<u2").tobytes(), top_down=False)
    return _bmp(16, rows, arr.shape[1], arr.shape[0], compression=3 if mode565 else 0, masks=masks)


def _bmp_rle(bits: int) -> bytes:
    """RLE8 (``bits`` 8) or RLE4 (4) BMP: encoded runs of equal indices,
    end-of-line and end-of-bitmap codes."""
    colours = 1 << bits
    img = _photo().quantize(colours)
    idx = np.asarray(img)
    pal = img.getpalette()[: colours * 3]
    pal += [0] * (colours * 3 - len(pal))
    palette = b"".join(bytes([pal[i * 3 + 2], pal[i * 3 + 1], pal[i * 3], 0]) for i in range(colours))
    data = bytearray()
    for y in range(idx.shape[0] - 1, -1, -1):
        row = idx[y]
        x = 0
        while x < len(row):
            n = 1
            while x + n < len(row) and n < 255 and row[x + n] == row[x]:
                n += 1
            v = int(row[x])
            data += bytes([n, v if bits == 8 else v << 4 | v])
            x += n
        data += b"\0\0"
    data += b"\0\1"
    return _bmp(bits, bytes(data), idx.shape[1], idx.shape[0], palette=palette, compression=1 if bits == 8 else 2)


def _bmp_rle_with_delta() -> bytes:
    """A 4×2 RLE8 BMP whose first row is a delta over all of it, palette
    entry 0 red: Pillow shows red there, a black fill would be wrong."""
    palette = bytes([0, 0, 255, 0]) + bytes([0, 255, 0, 0]) * 255
    data = bytes([0, 2, 0, 1, 4, 1, 0, 1])  # delta (0, 1), a run of 4, end
    return _bmp(8, data, 4, 2, palette=palette, compression=1)


def _bmp24_top_down() -> bytes:
    arr = np.asarray(_photo())
    rows = _bmp_rows(arr, lambda row: row[:, ::-1].tobytes(), top_down=True)
    return _bmp(24, rows, arr.shape[1], arr.shape[0], top_down=True)


BMP: Dict[str, Tuple[Callable[[], bytes], float]] = {
    "rgb24": (lambda: _save(_photo(), "BMP"), 0.5),
    "rgb24_odd_width": (lambda: _save(_photo((157, 101)), "BMP"), 0.5),
    "rgb24_top_down": (_bmp24_top_down, 0.5),
    "rgba32": (lambda: _save(_with_alpha(_photo()), "BMP"), 0.5),
    "palette8": (lambda: _save(_photo().quantize(256), "BMP"), 0.5),
    "palette16": (lambda: _save(_photo().quantize(16), "BMP"), 0.5),
    "gray8": (lambda: _save(_photo().convert("L"), "BMP"), 0.5),
    "bilevel1": (lambda: _save(_photo().convert("1"), "BMP"), 0.5),
    "rgb16_555": (lambda: _bmp16(False), 0.5),
    "rgb16_565_bitfields": (lambda: _bmp16(True), 0.5),
    "rle8": (lambda: _bmp_rle(8), 0.5),
    "rle4": (lambda: _bmp_rle(4), 0.5),
}

# --- TIFF -------------------------------------------------------------------


def _tifffile(arr: np.ndarray, **kw) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


def _rgb16() -> np.ndarray:
    """16-bit RGB whose high bytes are the photo and low bytes noise."""
    arr = np.asarray(_photo()).astype(np.uint16) << 8
    return arr | np.random.default_rng(5).integers(0, 256, arr.shape, dtype=np.uint16)


TIFF: Dict[str, Tuple[Callable[[], bytes], float]] = {
    "rgb_none": (lambda: _save(_photo(), "TIFF"), 0.5),
    "rgb_lzw": (lambda: _save(_photo(), "TIFF", compression="tiff_lzw"), 0.5),
    "rgb_deflate": (lambda: _save(_photo(), "TIFF", compression="tiff_adobe_deflate"), 0.5),
    "rgb_packbits": (lambda: _save(_photo(), "TIFF", compression="packbits"), 0.5),
    "rgb_jpeg": (lambda: _save(_photo(), "TIFF", compression="jpeg", quality=90), 1.0),
    "rgba_lzw": (lambda: _save(_with_alpha(_photo()), "TIFF", compression="tiff_lzw"), 0.5),
    "gray8": (lambda: _save(_photo().convert("L"), "TIFF"), 0.5),
    "gray16": (lambda: _tifffile((np.asarray(_photo().convert("L")).astype(np.uint16) << 8) | 0x55), 0.5),
    "bilevel_group4": (lambda: _save(_photo().convert("1"), "TIFF", compression="group4"), 0.5),
    "bilevel_none": (lambda: _save(_photo().convert("1"), "TIFF"), 0.5),
    "palette8": (lambda: _save(_photo().quantize(256), "TIFF"), 0.5),
    "palette4_lzw": (lambda: _save(_photo().quantize(16), "TIFF", compression="tiff_lzw"), 0.5),
    "cmyk": (lambda: _save(_photo().convert("CMYK"), "TIFF"), 0.5),
    "rgb16": (lambda: _tifffile(_rgb16(), photometric="rgb"), 0.5),
    "tiled_deflate": (lambda: _tifffile(np.asarray(_photo()), photometric="rgb", tile=(32, 48), compression="zlib"), 0.5),
    "big_endian": (lambda: _tifffile(np.asarray(_photo()), photometric="rgb", byteorder=">"), 0.5),
    "bigtiff": (lambda: _tifffile(np.asarray(_photo()), photometric="rgb", bigtiff=True), 0.5),
    "predictor_deflate": (lambda: _tifffile(np.asarray(_photo()), photometric="rgb", compression="zlib", predictor=True), 0.5),
    "multipage_first": (
        lambda: _save(_photo(), "TIFF", save_all=True, append_images=[_photo().transpose(Image.FLIP_LEFT_RIGHT)]),
        0.5,
    ),
}

ALL = [
    (f"{fmt}/{name}", make, tol)
    for fmt, table in (("webp", WEBP), ("gif", GIF), ("bmp", BMP), ("tiff", TIFF))
    for name, (make, tol) in table.items()
]


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
@pytest.mark.parametrize("label,make,tol", ALL, ids=[a[0] for a in ALL])
def test_variant_matches_pillow(client, label, make, tol, spec):
    data = make()
    Image.open(io.BytesIO(data)).load()  # the reference decoder reads it
    check_against_pillow(client, label, data, spec, "more_formats", tolerance=tol)


def test_variants_are_what_they_claim():
    """Guards the generators: the files really are the variants named."""
    def webp_chunks(d: bytes) -> List[bytes]:
        out, pos = [], 12
        while pos + 8 <= len(d):
            n = struct.unpack("<I", d[pos + 4 : pos + 8])[0]
            out.append(d[pos : pos + 4])
            pos += 8 + n + (n & 1)
        return out

    assert b"VP8 " in webp_chunks(WEBP["lossy"][0]())
    assert b"VP8L" in webp_chunks(WEBP["lossless"][0]())
    assert b"ALPH" in webp_chunks(WEBP["lossy_alpha"][0]())
    assert b"ANMF" in webp_chunks(WEBP["animated_lossy"][0]())
    interlaced = GIF["interlaced"][0]()
    assert interlaced[_gif_descriptor(interlaced) + 9] & 0x40, "interlace flag not set"
    assert Image.open(io.BytesIO(BMP["palette16"][0]())).mode == "P"
    assert Image.open(io.BytesIO(BMP["rle8"][0]())).info.get("compression") == 1
    assert Image.open(io.BytesIO(BMP["rle4"][0]())).info.get("compression") == 2
    assert Image.open(io.BytesIO(BMP["rgb16_565_bitfields"][0]())).info.get("compression") == 3
    tiled = Image.open(io.BytesIO(TIFF["tiled_deflate"][0]()))
    assert 322 in tiled.tag_v2 and tiled.info["compression"] in ("tiff_adobe_deflate", "tiff_deflate")
    assert TIFF["big_endian"][0]()[:2] == b"MM"
    assert TIFF["bigtiff"][0]()[:4] == b"II+\0"
    assert Image.open(io.BytesIO(TIFF["rgb_jpeg"][0]())).info["compression"] == "jpeg"
    assert Image.open(io.BytesIO(TIFF["multipage_first"][0]())).n_frames == 2


def _oriented(fmt: str, k: int) -> bytes:
    """The photo with orientation ``k`` (1: none) in WebP's EXIF chunk or the
    TIFF (or BigTIFF) Orientation tag."""
    if fmt == "webp":
        return _save(_photo(), "WEBP", quality=90, exif=_exif(k))
    if fmt == "bigtiff":
        return _tifffile(np.asarray(_photo()), photometric="rgb", bigtiff=True, extratags=[(0x0112, "H", 1, k, True)])
    return _save(_photo(), "TIFF", tiffinfo={0x0112: k})


@pytest.mark.parametrize("k", [2, 3, 5, 6, 8])
@pytest.mark.parametrize("fmt", ["webp", "tiff", "bigtiff"])
def test_orientation_like_pillow(client, fmt, k):
    """WebP's EXIF chunk and TIFF's Orientation tag rotate as Pillow does,
    and really rotate: the output is far from the unrotated photo's."""
    data = _oriented(fmt, k)
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112) == k
    diff, tensor, height, width = check_against_pillow(client, f"{fmt}/orientation_{k}", data, UINT8_HWC, "more_formats")
    assert (height, width) == ((160, 120) if k >= 5 else (120, 160))
    unrotated, _ = pillow_reference(_oriented(fmt, 1), UINT8_HWC)
    assert mean_abs_diff(tensor, UINT8_HWC, unrotated) > 5 * max(diff, 1.0)


def test_orientation_off(client):
    """``exif_orientation: false`` leaves a WebP stored as is; a TIFF's
    Orientation tag is part of its layout for Pillow (its TIFF loader
    applies it on load whatever the caller asks), so it still applies."""
    spec = dict(UINT8_HWC, exif_orientation=False)
    _, _, height, width = check_against_pillow(client, "webp/orientation_6_off", _oriented("webp", 6), spec, "more_formats")
    assert (height, width) == (120, 160)
    _, _, height, width = check_against_pillow(client, "tiff/orientation_6_off", _oriented("tiff", 6), spec, "more_formats")
    assert (height, width) == (160, 120)


def test_undecoded_variants_are_named(client):
    """Valid variants no decoder here implements are error rows naming them."""
    photo = _photo()
    cases = {
        "tiff_group3": (_save(photo.convert("1"), "TIFF", compression="group3"), "unsupported TIFF: compression method Fax3"),
        "tiff_float32": (_tifffile(np.asarray(photo.convert("L"), np.float32)), "unsupported TIFF: colour type Gray(32)"),
        "tiff_lab": (_save(photo.convert("LAB"), "TIFF"), "unsupported TIFF"),
        # Pillow un-premultiplies associated alpha; refused rather than darkened.
        "tiff_premultiplied": (
            _tifffile(np.asarray(_with_alpha(photo)), photometric="rgb", extrasamples=[1]),
            "unsupported TIFF: associated (premultiplied) alpha",
        ),
        "tiff_planar": (
            _tifffile(np.moveaxis(np.asarray(photo), -1, 0), photometric="rgb", planarconfig="separate"),
            "unsupported TIFF: planar",
        ),
        "tiff_6_samples": (
            _tifffile(np.zeros((8, 8, 6), np.uint8), photometric="minisblack", planarconfig="contig"),
            "unsupported TIFF: 6 samples per pixel",
        ),
        # Pillow paints pixels an RLE delta skips with palette entry 0.
        "bmp_rle8_delta_nonblack_entry0": (_bmp_rle_with_delta(), "unsupported BMP: RLE that skips pixels"),
    }
    rows = run_named(client, [(n, d) for n, (d, _) in cases.items()], UINT8_HWC)
    for name, (_, words) in cases.items():
        error = rows[name][3]
        assert error is not None and words in error, f"{name}: {error!r}"


def _patch_ifd(tif: bytearray, values: Dict[int, int]) -> None:
    """Overwrites inline SHORT/LONG values of the first IFD of a little-endian
    classic TIFF (a SHORT gets min(value, 65535))."""
    ifd = struct.unpack("<I", tif[4:8])[0]
    for i in range(struct.unpack("<H", tif[ifd : ifd + 2])[0]):
        e = ifd + 2 + 12 * i
        tag, typ = struct.unpack("<HH", tif[e : e + 4])
        if tag in values:
            if typ == 3:
                tif[e + 8 : e + 10] = struct.pack("<H", min(values[tag], 65535))
            else:
                tif[e + 8 : e + 12] = struct.pack("<I", values[tag])


def _hostile() -> List[Tuple[str, bytes, str]]:
    """(name, bytes, words the error must contain) for each new format."""
    webp = _save(_photo(), "WEBP", quality=90)
    gif = _save(_photo().quantize(64), "GIF")
    bmp = _save(_photo(), "BMP")
    tif = _save(_photo(), "TIFF", compression="tiff_lzw")

    # WebP: VP8X canvas 16383x16383 over the 160x120 frame.
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0, 0, 0, 0]) + (16382).to_bytes(3, "little") * 2
    body = b"WEBP" + vp8x + webp[12:]
    webp_canvas = b"RIFF" + struct.pack("<I", len(body)) + body
    # WebP: the frame's own size forged to 16383x16383 under a small canvas.
    small = b"VP8X" + struct.pack("<I", 10) + bytes([0, 0, 0, 0]) + (159).to_bytes(3, "little") + (119).to_bytes(3, "little")
    forged_frame = bytearray(webp)
    at = forged_frame.index(b"\x9d\x01\x2a") + 3
    forged_frame[at : at + 4] = struct.pack("<HH", 16383, 16383)
    body = b"WEBP" + small + bytes(forged_frame[12:])
    webp_frame = b"RIFF" + struct.pack("<I", len(body)) + body

    # GIF: 1x1 logical screen, 65535x65535 frame.
    gif_frame = bytearray(gif)
    gif_frame[6:10] = struct.pack("<HH", 1, 1)
    at = _gif_descriptor(gif)
    gif_frame[at + 5 : at + 9] = struct.pack("<HH", 65535, 65535)

    # BMP: 100000 x 100000 header.
    bmp_big = bytearray(bmp)
    bmp_big[18:26] = struct.pack("<ii", 100000, 100000)

    # TIFF: ImageWidth/ImageLength forged to 100000 x 100000 (60000 if SHORT).
    tif_big = bytearray(tif)
    _patch_ifd(tif_big, {256: 100000, 257: 100000})
    # TIFF: JPEG strips whose own frame header says 16383x16383.
    jpeg_tif = bytearray(_save(_photo(), "TIFF", compression="jpeg", quality=90))
    sof = jpeg_tif.index(b"\xff\xc0")
    jpeg_tif[sof + 5 : sof + 9] = struct.pack(">HH", 16383, 16383)
    # TIFF: one 65535x65535 tile for a 1x1 page (the tile count still fits).
    tiled = bytearray(_tifffile(np.zeros((1, 1, 3), np.uint8), photometric="rgb", tile=(16, 16)))
    _patch_ifd(tiled, {322: 65535, 323: 65535})
    # TIFF: an LZW "bomb": a 2000x2000 page (4 Mpx, inside the limits) whose
    # one strip claims the whole image but holds 64 bytes of data.
    bomb = _save(Image.new("L", (2000, 2000)), "TIFF", compression="tiff_lzw")

    return [
        ("webp_truncated", webp[: len(webp) // 2], "truncated WebP"),
        ("webp_vp8x_canvas_16383", webp_canvas, "corrupt WebP"),
        ("webp_frame_16383_under_small_canvas", webp_frame, "bitstream is 16383x16383"),
        ("webp_garbage_after_riff", b"RIFF\x20\0\0\0WEBPVP8 " + b"\xff" * 24, "WebP"),
        ("gif_truncated", gif[: len(gif) // 2], "GIF"),
        ("gif_tiny_screen_huge_frame", bytes(gif_frame), "over the"),
        ("gif_no_image", gif[:13] + b";", "GIF"),
        ("bmp_truncated", bmp[: len(bmp) // 2], "BMP"),
        ("bmp_100000x100000", bytes(bmp_big), "over the"),
        ("tiff_truncated", tif[: len(tif) // 3], "TIFF"),
        # The crate finds the strip table inconsistent with the forged size
        # while reading the IFD: refused before anything is allocated.
        ("tiff_100000x100000", bytes(tif_big), "TIFF"),
        # A valid 9000x8000 page (72 Mpx): over the pixel limit from its header.
        ("tiff_72mpx_valid", _tifffile(np.zeros((8000, 9000), np.uint8), compression="zlib"), "over the"),
        ("tiff_strip_bomb", bomb[:200], "TIFF"),
        ("tiff_jpeg_strip_16383x16383", bytes(jpeg_tif), "a JPEG strip or tile of 16383x16383"),
        ("tiff_65535x65535_tiles", bytes(tiled), "65535x65535 tiles for a 1x1 image"),
        ("tiff_bad_ifd_offset", b"II*\0\xff\xff\xff\x7f" + b"\0" * 64, "TIFF"),
    ]


def test_hostile_variants_are_row_errors(client, server):
    cases = _hostile()
    good = _save(_photo(), "WEBP", quality=90)
    named = [(n, d) for n, d, _ in cases] + [("good", good)]
    rows = run_named(client, named, UINT8_HWC)
    server.check_alive("after hostile WebP/GIF/BMP/TIFF rows")
    problems = []
    for name, _, words in cases:
        _, _, _, error = rows[name]
        if error is None or words not in error:
            problems.append(f"{name}: error {error!r} does not contain {words!r}")
    assert rows["good"][3] is None, rows["good"][3]
    assert not problems, "\n".join(problems)
