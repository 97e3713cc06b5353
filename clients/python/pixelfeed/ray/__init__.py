"""Ray Data integration: run pixelfeed preprocessing inside a Ray cluster.

Two entry points, both plain Arrow Flight underneath:

- :class:`Preprocessor`, a callable class for ``Dataset.map_batches`` in an
  actor pool: each actor keeps one long-lived Flight connection (a
  :class:`pixelfeed.Client`) to one pixelfeed server and streams every batch
  it is given through ``DoExchange``::

      import ray
      from pixelfeed.ray import Preprocessor, drop_errors

      ds = ray.data.read_binary_files("s3://bucket/imgs/", include_paths=True)
      ds = ds.map_batches(
          Preprocessor,
          fn_constructor_kwargs={"locations": ["grpc://10.0.0.5:8815", "grpc://10.0.0.6:8815"],
                                 "spec": "imagenet", "image_column": "bytes"},
          batch_format="pyarrow",
          compute=ray.data.ActorPoolStrategy(size=8),
          num_cpus=0.25,        # the actor mostly waits on the server
      )
      for batch in drop_errors(ds).drop_columns(["path"]).iter_torch_batches(batch_size=256):
          x = batch["tensor"]   # torch.Tensor (N, 3, 224, 224)

  :func:`preprocess` is the same call with those defaults filled in.

- :func:`read_pixelfeed`, a Ray Data datasource over a dataset the *server*
  reads itself: one ``GetFlightInfo`` returns K endpoints (a ticket plus the
  servers that can serve it), and each endpoint becomes one Ray read task
  running ``DoGet`` — so a cluster reads a sharded dataset from many servers
  in parallel.

Which server an actor uses: the locations come from the ``locations``
argument, else the ``PIXELFEED_LOCATIONS`` environment variable (comma or
space separated; set it per node, or through ``runtime_env={"env_vars": ...}``
since Ray workers do not inherit the driver's environment). A name that
resolves to several addresses (a Kubernetes headless Service) counts as one
location per address. An actor prefers the servers on its own node (the node
IP from ``ray.util.get_node_ip_address()``; loopback addresses count as
local) and spreads over them, or over all servers when none is local,
round-robin by actor (a tiny named counter actor hands out the indexes). If
its server becomes unreachable the actor reconnects to the next one and
redoes the whole batch.

Rows are never dropped or duplicated: a bad image comes back as a row with a
null ``tensor`` and an ``error`` text (never an exception), and the output
table of a batch is built only once the server returned every row, so Ray's
task or actor retries re-run whole batches. The output tensor column is the
canonical ``arrow.fixed_shape_tensor`` extension type as the server sent it
(no conversion, no copy): Ray Data >= 2.50 with pyarrow >= 16 treats it as one
of its tensor types (ray-project/ray#56284; older Ray could not even move it
through the object store, ray-project/ray#51959, hence the version floor), so
``iter_batches(batch_format="numpy")`` gives ``(N, *shape)`` arrays and
``iter_torch_batches`` torch tensors, *once the error rows are gone* — Arrow refuses to turn a tensor
column holding nulls into one ndarray, and Ray refuses to turn the string
``error`` column into a torch tensor. :func:`drop_errors` removes both;
:func:`errors_only` keeps just the failures for a report.

Modules: :mod:`~pixelfeed.ray.locations` (location lists, DNS expansion,
node affinity; no Ray calls), :mod:`~pixelfeed.ray.preprocessor`
(``Preprocessor``, ``preprocess``, the round-robin counter actor),
:mod:`~pixelfeed.ray.filters` (``drop_errors``, ``errors_only``) and
:mod:`~pixelfeed.ray.datasource` (``read_pixelfeed``).
"""

from __future__ import annotations

try:
    import ray  # noqa: F401
    from ray.data.datasource import Datasource  # noqa: F401
except ImportError as _e:  # pragma: no cover - depends on the environment
    raise ImportError("pixelfeed.ray needs Ray Data: pip install 'pixelfeed[ray]' (ray[data])") from _e

from .datasource import PixelfeedDatasource, read_pixelfeed
from .filters import drop_errors, errors_only
from .locations import LOCATIONS_ENV, choose_locations, expand_locations, parse_locations
from .preprocessor import Preprocessor, preprocess

__all__ = [
    "LOCATIONS_ENV",
    "Preprocessor",
    "preprocess",
    "drop_errors",
    "errors_only",
    "parse_locations",
    "choose_locations",
    "expand_locations",
    "read_pixelfeed",
    "PixelfeedDatasource",
]
