#!/usr/bin/env bash
# The GPU check, run on a machine with an NVIDIA GPU, PyTorch and
# torchvision, from the repository root, after tests/gpu/prepare.sh staged
# .gpu/ (release binaries + images):
#   bash tests/gpu/run.sh [repeat]
# It starts the server, confirms its output pool is pinned (DoAction stats),
# streams the images to the GPU through the Rust DeviceUploader and through
# the Python TorchLoader while a randomly initialised torchvision ResNet-50
# runs bf16 inference on the stream, and prints images/s, H2D GB/s and the
# fraction of time the GPU waited for data; checks that pixelfeed.Engine's
# pinned blocks reach the GPU with no staging copy (tests/gpu/native_direct.py);
# then tests/gpu/feed_sweep.py
# (issue #18's table: engine at all cores and its straggler cost, one
# TorchLoader with K = 1/2/4/8 streams over TCP and a Unix socket, a
# ResNet-50 training step fed by pixelfeed and by the two torchvision
# baselines). Bounded: about 9 minutes in all; `bash tests/gpu/run.sh 20
# sweep` runs the sweep alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
repeat=${1:-20}
export PYTHONPATH="$PWD/clients/python${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -m pip install -q --no-deps --force-reinstall .gpu/wheels/*.whl \
  || echo "note: the pixelfeed_native wheel did not install; in-process rows will be skipped" >&2
echo "cores: $(nproc)"

only=${2:-all}
log=$(mktemp)
sock_dir=$(mktemp -d)
.gpu/bin/pixelfeed serve --listen 127.0.0.1:0 >"$log" 2>&1 &
server=$!
.gpu/bin/pixelfeed serve --listen "unix://$sock_dir/pf.sock" >"$log.unix" 2>&1 &
unix_server=$!
trap 'kill $server $unix_server 2>/dev/null || true; rm -rf "$sock_dir"' EXIT
for _ in $(seq 1 100); do
  addr=$(sed -n 's/.*pixelfeed listening on \([0-9.:]*\).*/\1/p' "$log" | head -n1)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "${addr:-}" ] || { cat "$log"; echo "server did not start" >&2; exit 1; }
location="grpc://$addr"
echo "server at $location"

python3 - "$location" <<'PY'
import json, sys
import pyarrow.flight as fl
c = fl.connect(sys.argv[1])
stats = json.loads(next(iter(c.do_action(fl.Action("stats", b"")))).body.to_pybytes())
print("pool stats:", json.dumps(stats["pool"]))
assert stats["pool"]["mode"] == "pinned", "output pool is not pinned on a CUDA machine"
PY

if [ "$only" = sweep ]; then
  timeout 420 python3 tests/gpu/feed_sweep.py --tcp "$location" --unix "grpc+unix://$sock_dir/pf.sock" \
    --images .gpu/images --engine-bench .gpu/bin/engine_bench
  exit 0
fi

echo "== pytest: CPU and CUDA handoff tests that need torch (skipped in CI)"
PIXELFEED_BIN=.gpu/bin/pixelfeed timeout 120 python3 -m pytest -q -p no:cacheprovider tests/python/test_gpu_handoff.py tests/python/test_client.py -k "torch" -rs

echo "== pixelfeed.Engine in process -> TorchLoader: pinned blocks uploaded with no staging copy"
timeout 120 python3 tests/gpu/native_direct.py --images .gpu/images \
  || echo "native_direct failed (or pixelfeed_native is not installed)" >&2

echo "== Rust DeviceUploader"
timeout 120 .gpu/bin/rust_gpu_upload --server "$location" --images .gpu/images --repeat "$repeat" --batch-size 128

echo "== Python TorchLoader + ResNet-50 (bf16, random weights)"
timeout 100 python3 tests/gpu/torch_feed.py --server "$location" --images .gpu/images --repeat "$repeat" --batch-size 128
echo "== same, uint8 HWC on the wire, normalised on the GPU"
timeout 100 python3 tests/gpu/torch_feed.py --server "$location" --images .gpu/images --repeat "$repeat" --batch-size 128 --u8

echo "== issue #18 sweep: engine, K streams, training step vs torchvision baselines"
timeout 420 python3 tests/gpu/feed_sweep.py --tcp "$location" --unix "grpc+unix://$sock_dir/pf.sock" \
  --images .gpu/images --engine-bench .gpu/bin/engine_bench

python3 - "$location" <<'PY'
import json, sys
import pyarrow.flight as fl
c = fl.connect(sys.argv[1])
stats = json.loads(next(iter(c.do_action(fl.Action("stats", b"")))).body.to_pybytes())
p = stats["pool"]
print("pool after run:", json.dumps(p))
assert p["blocks_in_use"] == 0, "blocks leaked"
print(f"pool reuse: {p['allocations']} allocations for {p['reuses'] + p['allocations']} batches")
PY
