"""Per-device memory and time of ``hubquant.apply`` on forced host devices:
one device against a mesh under the family's layout map.

    python bench/big_preset.py --shape gemma_2b --output /tmp/gemma_2b_shaped
    python bench/sharded_apply.py /tmp/gemma_2b_shaped [--mesh 4,1] [--config int4]

Each row runs in a fresh process with ``--xla_force_host_platform_device_count``
set to the mesh's size. A thread samples, every 50 ms, the bytes of the live
JAX buffers held on each device; the peak of the fullest device is printed
with the wall time. A mesh of ``batch, model`` uses ``GemmaBackbone.get_layout_map``
(Gemma's map also splits weights along ``batch``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict


def _held_by_device() -> dict:
    """Bytes of the distinct buffers live on each device (CPU devices keep no
    memory statistics; a sharded array and the arrays viewing its shards
    share buffers, counted once)."""
    import jax

    buffers = {}
    for array in jax.live_arrays():
        try:
            for shard in array.addressable_shards:
                data = shard.data
                buffers[(shard.device.id, data.unsafe_buffer_pointer())] = data.nbytes
        except RuntimeError:  # deleted while we looked
            continue
    held = defaultdict(int)
    for (device, _), size in buffers.items():
        held[device] += size
    return held


class _Sampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak: dict = defaultdict(int)
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.05):
            for device, size in _held_by_device().items():
                self.peak[device] = max(self.peak[device], size)


def _row(preset: str, config: str, mesh: tuple | None) -> dict:
    import keras
    import keras_hub

    import hubquant

    scope = None
    if mesh is not None:
        devices = keras.distribution.DeviceMesh(
            mesh, ("batch", "model"), keras.distribution.list_devices()
        )
        layout_map = keras_hub.models.GemmaBackbone.get_layout_map(devices)
        scope = keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
    sampler = _Sampler()
    sampler.start()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        if scope is None:
            hubquant.apply(preset, config, f"{out}/q")
        else:
            with scope.scope():
                hubquant.apply(preset, config, f"{out}/q")
        seconds = time.perf_counter() - start
    sampler.done.set()
    sampler.join()
    return {"seconds": seconds, "peak": max(sampler.peak.values(), default=0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset")
    parser.add_argument("--mesh", default="4,1", help="batch,model")
    parser.add_argument("--config", default="int4")
    parser.add_argument("--row", choices=["single", "sharded"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    mesh = tuple(int(n) for n in args.mesh.split(","))
    if args.row:
        row = _row(args.preset, args.config, mesh if args.row == "sharded" else None)
        print(json.dumps(row))
        return
    env = dict(os.environ, KERAS_BACKEND="jax")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={mesh[0] * mesh[1]}"
    rows = {}
    for row in ("single", "sharded"):
        command = [sys.executable, __file__, args.preset, "--mesh", args.mesh]
        command += ["--config", args.config, "--row", row]
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        rows[row] = json.loads(out.stdout.strip().splitlines()[-1])
    single, sharded = rows["single"], rows["sharded"]
    print(f"hubquant apply --config {args.config}, {args.preset}, mesh {mesh} (batch, model)")
    print(f"{'':10s} {'peak bytes/device':>18s} {'seconds':>8s}")
    for name, row in rows.items():
        print(f"{name:10s} {row['peak'] / 2**20:15.1f} MiB {row['seconds']:8.1f}")
    print(
        f"sharded / single: memory {sharded['peak'] / single['peak']:.3f}x, "
        f"time {sharded['seconds'] / single['seconds']:.2f}x"
    )


if __name__ == "__main__":
    main()
