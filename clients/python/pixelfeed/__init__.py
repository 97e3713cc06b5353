"""pixelfeed: turn encoded images (JPEG, PNG, WebP, GIF, BMP, TIFF) into tensors on a pixelfeed server.

Quick use::

    import pixelfeed

    client = pixelfeed.connect("grpc://127.0.0.1:8815")
    for batch in client.preprocess([open(p, "rb").read() for p in paths]):
        x = pixelfeed.tensors(batch)    # (N, 3, 224, 224) float32, zero-copy
        ok = pixelfeed.valid(batch)     # (N,) bool
        why = pixelfeed.errors(batch)   # [None | "message", ...]

- :func:`connect` / :class:`Client` — the Flight connection; :meth:`Client.preprocess`
  streams images through ``DoExchange``, :meth:`Client.presets` lists presets.
- :func:`tensors`, :func:`valid`, :func:`errors`, :func:`batch_spec` — read the
  output batches without copying.
- :class:`Engine` — the same engine in this process, no server (needs the
  optional native module ``pixelfeed_native``; see :mod:`pixelfeed.native`).
- :mod:`pixelfeed.interop` (``dlpack_values`` for JAX/CuPy) and
  :mod:`pixelfeed.torch` (``to_torch``, ``TorchLoader``, ``preprocess_batch``;
  needs PyTorch, not imported here).
"""

from . import interop
from .arrays import (
    batch_spec,
    errors,
    geometry,
    heights,
    tensor_dtype,
    tensor_shape,
    tensors,
    tensors_bf16,
    valid,
    warnings,
    widths,
)
from .client import DEFAULT_PRESET, Client, connect, encode_spec


def _version() -> str:
    """The installed distribution's version; a source tree that was never installed has none."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pixelfeed")
    except PackageNotFoundError:
        return "0+unknown"


__version__ = _version()


def __getattr__(name: str):
    """``pixelfeed.Engine``, imported on first use (the native module is optional)."""
    if name == "Engine":
        from .native import Engine

        return Engine
    raise AttributeError(f"module 'pixelfeed' has no attribute {name!r}")

__all__ = [
    "Client",
    "connect",
    "Engine",
    "encode_spec",
    "DEFAULT_PRESET",
    "tensors",
    "tensors_bf16",
    "tensor_dtype",
    "errors",
    "warnings",
    "geometry",
    "valid",
    "heights",
    "widths",
    "tensor_shape",
    "batch_spec",
    "interop",
    "__version__",
]
