"""The wire contract, as the Python client knows it: names, keys and commands.

Every string the client and the server must agree on is written here once;
the rest of the package imports it from here. The Rust contract crate
(``pixelfeed-schema``) exports the same values as ``schema/fixtures/contract.json``,
and ``tests/python/test_contract.py`` checks that this module equals that file,
so a rename on either side fails a test instead of drifting.

Builders of the two commands a client sends:

- :func:`encode_spec`: the ``DoExchange`` descriptor command (a transform spec);
- :func:`info_command`: the ``GetFlightInfo`` descriptor command of a sharded
  dataset read, ``{"dataset", "spec", "shards"}``.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Tuple, Union

#: Version of the wire contract (schema metadata ``pixelfeed.version``).
WIRE_VERSION = "1"

# -- column names --------------------------------------------------------------------

#: Input: the encoded image bytes (binary, large_binary or binary_view).
IMAGE_COLUMN = "image"
#: Output: the tensor (``arrow.fixed_shape_tensor``), null for failed rows.
TENSOR_COLUMN = "tensor"
#: Output: utf8, null for good rows, the reason for failed ones.
ERROR_COLUMN = "error"
#: Output: uint32 source height after EXIF orientation.
HEIGHT_COLUMN = "height"
#: Output: uint32 source width after EXIF orientation.
WIDTH_COLUMN = "width"
#: Output: utf8, set when a row decoded only with recovery.
WARNING_COLUMN = "warning"
#: Output: struct mapping the output back to the source (:data:`GEOMETRY_FIELDS`).
GEOMETRY_COLUMN = "geometry"
#: Input (optional): an integer column keying the row's random draws.
SEED_COLUMN = "seed"
#: The columns the server appends to the passthrough columns, in order.
OUTPUT_COLUMNS: Tuple[str, ...] = (
    TENSOR_COLUMN,
    ERROR_COLUMN,
    HEIGHT_COLUMN,
    WIDTH_COLUMN,
    WARNING_COLUMN,
    GEOMETRY_COLUMN,
)
#: The fields of the ``geometry`` struct, in order.
GEOMETRY_FIELDS: Tuple[str, ...] = (
    "orientation",
    "flipped_horizontal",
    "flipped_vertical",
    "scale_y",
    "scale_x",
    "box_top",
    "box_left",
    "box_height",
    "box_width",
)

# -- schema and field metadata -----------------------------------------------------------

#: Schema metadata: the resolved spec the server applied (JSON).
SPEC_METADATA_KEY = "pixelfeed.spec"
#: Schema metadata: :data:`WIRE_VERSION`.
VERSION_METADATA_KEY = "pixelfeed.version"
#: Tensor field metadata: the spec's dtype (``bfloat16`` travels as ``uint16``).
DTYPE_METADATA_KEY = "pixelfeed.dtype"
#: Field metadata: the Arrow extension type name.
EXTENSION_NAME_KEY = "ARROW:extension:name"
#: Field metadata: the Arrow extension type's parameters (JSON).
EXTENSION_METADATA_KEY = "ARROW:extension:metadata"
#: The tensor column's canonical Arrow extension type.
TENSOR_EXTENSION = "arrow.fixed_shape_tensor"

# -- presets, tickets, errors --------------------------------------------------------------

#: The preset used when no spec is given.
DEFAULT_PRESET = "imagenet"
#: The server's built-in presets (``DoAction("presets")`` lists them with their specs).
PRESET_NAMES: Tuple[str, ...] = ("imagenet", "imagenet_train", "clip", "siglip", "dinov2", "raw_u8")
#: Version of the shard tickets the server issues (they are opaque to clients).
TICKET_VERSION = 1
#: Most shards one ``GetFlightInfo`` may ask for.
MAX_SHARDS = 65536
#: The kinds of per-row failure the server distinguishes (its ``errors_total{reason}`` labels).
ERROR_KINDS: Tuple[str, ...] = (
    "null",
    "empty",
    "too_many_bytes",
    "too_many_pixels",
    "aspect_ratio",
    "unsupported_format",
    "unknown_format",
    "corrupt",
    "truncated",
    "unsupported_variant",
    "decode_failed",
    "resized_too_large",
    "metadata_too_large",
    "internal",
)

# -- commands ------------------------------------------------------------------------------

SpecLike = Union[None, str, bytes, Mapping[str, Any]]


def encode_spec(spec: SpecLike = None) -> bytes:
    """Turn a spec argument into the JSON bytes sent as the descriptor command.

    - ``None`` → ``{"preset": "imagenet"}``;
    - a ``str``: a preset name (``"imagenet"``), or a JSON object in text form;
    - a mapping: serialised as JSON (``None`` values become ``null``, which
      is how a preset field is removed, e.g. ``{"normalize": None}``);
    - ``bytes``: sent unchanged.

    Validation is the server's job: a bad spec makes :meth:`Client.preprocess`
    raise ``pyarrow.ArrowInvalid`` / ``FlightServerError`` naming the field.
    """
    if spec is None:
        return json.dumps({"preset": DEFAULT_PRESET}).encode()
    if isinstance(spec, bytes):
        return spec
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{"):
            json.loads(text)  # fail early on malformed JSON text
            return text.encode()
        return json.dumps({"preset": spec}).encode()
    if isinstance(spec, Mapping):
        return json.dumps(dict(spec)).encode()
    raise TypeError(f"spec must be None, a preset name, a dict or JSON bytes, got {type(spec).__name__}")


def info_command(dataset: str, spec: SpecLike, shards: int) -> bytes:
    """The ``GetFlightInfo`` CMD descriptor bytes of a sharded dataset read.

    ``{"dataset": dataset, "spec": SPEC, "shards": shards}``, where SPEC is the
    spec as :func:`encode_spec` sends it: ``None`` → ``{"preset": DEFAULT_PRESET}``,
    a preset name → ``{"preset": name}``, a mapping as given.
    """
    return json.dumps({"dataset": dataset, "spec": json.loads(encode_spec(spec)), "shards": int(shards)}).encode()
