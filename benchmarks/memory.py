"""Per-device memory of the official configs' training steps, compiled for their meshes.

Each row compiles the real step (``python -m copgen_jax.main --describe --compile``) on
forced host devices, one process per row, and reads XLA's memory analysis: the official
setting and the same with one knob changed (remat off, the whole-logits attention,
unscanned blocks, no micro-batches). XLA:CPU plans memory differently from XLA:TPU and
XLA:GPU, so the numbers are a proxy; what scales with batch, remat and attention scales alike.

  python benchmarks/memory.py --out=benchmarks/results/memory.json
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OUT = flags.DEFINE_string("out", "benchmarks/results/memory.json", "Where to write the JSON.")
_ONLY = flags.DEFINE_string("only", "", "Run only the rows whose name contains this.")

# (name, config, devices, overrides)
ROWS = [
    ("tpu_v4", "configs/tpu_v4.py", 16, []),
    ("tpu_v4, remat none", "configs/tpu_v4.py", 16, ["--config.model.remat_policy=none"]),
    ("tpu_v4, attention xla", "configs/tpu_v4.py", 16, ["--config.model.attention=xla"]),
    ("tpu_v4, blocks unscanned", "configs/tpu_v4.py", 16, ["--config.model.scan_blocks=false"]),
    ("tpu_v4, microbatches 1", "configs/tpu_v4.py", 16, ["--config.train.microbatches=1"]),
    ("gpu_h100", "configs/gpu_h100.py", 8, []),
    ("gpu_h100, remat none", "configs/gpu_h100.py", 8, ["--config.model.remat_policy=none"]),
    ("gpu_h100, attention xla", "configs/gpu_h100.py", 8, ["--config.model.attention=xla"]),
]
GIB = 2 ** 30


def compile_report(config: str, devices: int, overrides: list[str]) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    cmd = [sys.executable, "-m", "copgen_jax.main", f"--config={config}", "--describe", "--compile", *overrides]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    rows = []
    for name, config, devices, overrides in ROWS:
        if _ONLY.value not in name:
            continue
        t0 = time.perf_counter()
        r = compile_report(config, devices, overrides)
        rows.append({"name": name, "config": config, "overrides": overrides, "compile_s": time.perf_counter() - t0,
                     **{k: r[k] for k in ("devices", "per_device_batch", "microbatches", "examples_per_device_at_once",
                                          "attention", "remat_policy", "scan_blocks", "peak_bytes_per_device",
                                          "temp_bytes_per_device", "param_bytes_per_device", "collectives")}})
        print(f"{name}: peak {r['peak_bytes_per_device'] / GIB:.2f} GiB ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\n{'row':<28}{'dev':>4}{'batch/dev':>10}{'at once':>8}{'peak GiB':>10}{'temp GiB':>10}")
    for r in rows:
        print(f"{r['name']:<28}{r['devices']:>4}{r['per_device_batch']:>10}{r['examples_per_device_at_once']:>8}"
              f"{r['peak_bytes_per_device'] / GIB:>10.2f}{r['temp_bytes_per_device'] / GIB:>10.2f}")
    result = {"host": f"{platform.machine()}, {os.cpu_count()} cores, XLA:CPU forced host devices", "rows": rows}
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)
