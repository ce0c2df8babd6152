"""Peak memory of `hubquant apply` (streaming) against Keras' own path, and on-disk sizes.

Each run is a separate process measured with `/usr/bin/time -v` (peak RSS of
the whole process). Keras' path (`from_preset`, then `model.quantize`) runs
under a memory cap enforced by polling its RSS; if it crosses the cap it is
killed, and the bench reports that. Beside the peak, it prints apply's time
divided by the time to read every weight of the preset into NumPy once, measured
in the same run.

    python bench/big_preset.py --shape gemma_2b --output /tmp/g2b
    python bench/stream_memory.py /tmp/g2b --keras --sizes
    python bench/stream_memory.py /tmp/g7b --config int4
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GIB = 2**30
_RUNTIME = "import hubquant, keras_hub"  # the fixed cost: interpreter and libraries
# Read every tensor of the preset's weights file(s) into NumPy once: the floor for apply.
_READ = """
import sys, time, pathlib, h5py, numpy as np
start, values = time.perf_counter(), 0
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.weights*.h5")):
    with h5py.File(path, "r") as f:
        def read(name, item):
            global values
            if isinstance(item, h5py.Dataset):
                values += np.asarray(item[()]).size
        f.visititems(read)
print(time.perf_counter() - start, values)
"""
_KERAS = """
import sys, keras_hub
import hubquant  # quiets TensorFlow; Keras' path below is Keras' own
from keras.quantizers import Int4QuantizationConfig
model = keras_hub.models.CausalLM.from_preset(sys.argv[1], dtype="bfloat16")
model.quantize("int4", config=Int4QuantizationConfig(block_size=128))
"""


def timed(cmd: list[str]) -> tuple[float, float, int]:
    """(peak RSS in GiB, seconds, exit code) of one process."""
    start = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=_env())
    seconds = time.perf_counter() - start
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr)
    if out.returncode:
        print(out.stderr[-2000:], file=sys.stderr)
    return int(rss.group(1)) / 2**20 if rss else float("nan"), seconds, out.returncode


def capped(cmd: list[str], cap_gib: float) -> tuple[float, float, bool]:
    """(peak RSS seen in GiB, seconds, killed) of a process killed past ``cap_gib``."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, killed = 0.0, False
    while proc.poll() is None:
        peak = max(peak, _rss_gib(proc.pid))
        if peak > cap_gib:
            proc.kill()
            killed = True
            break
        time.sleep(0.2)
    proc.wait()
    return peak, time.perf_counter() - start, killed


def _rss_gib(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match.group(1)) / 2**20 if match else 0.0


def _env() -> dict:
    return {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "jax")}


def bound_gib(report: dict, runtime_gib: float) -> float:
    """1.3 x (quantized model + largest block's float weights) + runtime."""
    quantized = report["total"]["bytes_after"] / GIB
    block = report["total"]["largest_block_bytes"] / GIB
    return 1.3 * (quantized + block) + runtime_gib


def apply(preset: Path, config: str, output: Path, report: Path) -> tuple[float, float, int]:
    cmd = [sys.executable, "-m", "hubquant.cli", "apply", "--preset", str(preset)]
    cmd += ["--config", config, "--output", str(output), "--quiet", "--report", str(report)]
    return timed(cmd)


def read_seconds(preset: Path) -> float:
    """Seconds to read every tensor of the preset's weights into NumPy, in a
    fresh process (the page cache is as warm as apply left it)."""
    out = subprocess.run(
        [sys.executable, "-c", _READ, str(preset)], capture_output=True, text=True, check=True
    )
    return float(out.stdout.split()[0])


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", type=Path)
    parser.add_argument("--config", default="int4")
    parser.add_argument("--keras", action="store_true", help="also run Keras' path, capped")
    parser.add_argument("--cap", type=float, default=20.0, help="GiB for Keras' path")
    parser.add_argument("--sizes", action="store_true", help="on-disk size per shipped config")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hubquant_bench_"))
    try:
        runtime, startup, _ = timed([sys.executable, "-c", _RUNTIME])
        rss, seconds, code = apply(args.preset, args.config, work / "out", work / "r.json")
        if code:
            raise SystemExit(f"hubquant apply failed with exit code {code}")
        report = json.loads((work / "r.json").read_text())
        limit = bound_gib(report, runtime)
        print(f"preset {args.preset} ({folder_bytes(args.preset) / GIB:.2f} GiB on disk)")
        print(f"runtime alone (import hubquant, keras_hub): {runtime:.2f} GiB")
        print(
            f"hubquant apply --config {args.config}: peak RSS {rss:.2f} GiB in {seconds:.0f}s; "
            f"bound 1.3 x (quantized + largest block) + runtime = {limit:.2f} GiB"
        )
        read = read_seconds(args.preset)
        print(
            f"reading every weight into NumPy once: {read:.1f}s; "
            f"apply / read = {seconds / read:.1f}x (apply includes starting Python, {startup:.1f}s)"
        )
        if args.keras:
            peak, secs, killed = capped([sys.executable, "-c", _KERAS, str(args.preset)], args.cap)
            what = f"killed at {peak:.2f} GiB (cap {args.cap:.0f} GiB)" if killed else "finished"
            print(
                f"Keras from_preset + quantize int4: {what}, peak RSS >= {peak:.2f} GiB, {secs:.0f}s"
            )
            if not killed:
                print(f"ratio Keras / hubquant peak RSS: {peak / rss:.1f}x")
        if args.sizes:
            float_bytes = folder_bytes(args.preset)
            print(f"{'config':8s} {'GiB on disk':>12s} {'x float':>8s}")
            print(f"{'float':8s} {float_bytes / GIB:12.2f} {1.0:8.2f}")
            for name in ("int8", "int4", "mixed"):
                out = work / f"size_{name}"
                if name == args.config:
                    out = work / "out"
                else:
                    apply(args.preset, name, out, work / f"{name}.json")
                size = folder_bytes(out)
                print(f"{name:8s} {size / GIB:12.2f} {size / float_bytes:8.2f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
