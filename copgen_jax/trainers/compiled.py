"""What a config's training step needs per device, read from its compiled executable.

``step_report`` builds the trainer abstractly (no parameter, batch or optimizer state
is allocated), lowers the real step for the config's mesh on the devices present
(forced host devices included) and reads XLA's memory analysis and the collectives
of the optimised HLO. On XLA:CPU the numbers are a proxy for a TPU or GPU: the
compilers plan memory differently, but what scales with batch, depth and attention
scales alike.
"""
from __future__ import annotations

import collections
import re

import jax
import numpy as np

from copgen_jax.trainers.loop import Trainer

COLLECTIVES = ("all-reduce", "reduce-scatter", "all-gather", "all-to-all", "collective-permute")
_OP = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_ARRAY = re.compile(r"\b(pred|[a-z]+\d+)\[([\d,]*)\]")
_BYTES = {"pred": 1}


def _shape_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _ARRAY.findall(text):
        size = _BYTES.get(dtype) or max(int(re.sub(r"\D", "", dtype) or 8) // 8, 1)
        total += size * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
    return total


def collectives(hlo_text: str) -> dict:
    """{kind: {"count", "bytes"}} of the collectives in optimised HLO text (result bytes)."""
    out = collections.defaultdict(lambda: {"count": 0, "bytes": 0})
    for line in hlo_text.splitlines():
        match = _OP.search(line)
        if match and "=" in line[:match.start()]:  # "%name = RESULT_SHAPES kind(operands)"
            out[match.group(1)]["count"] += 1
            out[match.group(1)]["bytes"] += _shape_bytes(line[line.index("=") + 1:match.start()])
    return dict(out)


def memory(compiled) -> dict:
    """Per-device bytes of a compiled step; aliased (donated) buffers counted once."""
    m = compiled.memory_analysis()
    peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    return {"peak_bytes_per_device": int(peak), "temp_bytes_per_device": int(m.temp_size_in_bytes),
            "argument_bytes_per_device": int(m.argument_size_in_bytes),
            "output_bytes_per_device": int(m.output_size_in_bytes), "alias_bytes_per_device": int(m.alias_size_in_bytes)}


def step_report(cfg, task) -> dict:
    """Compile the training step of ``task`` under ``cfg`` and report its size per device."""
    trainer = Trainer(cfg, task, abstract=True)
    compiled = trainer.lower().compile()
    shards = trainer.mesh.shape["data"] * trainer.mesh.shape["fsdp"]
    return {
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
        "per_device_batch": cfg.train.global_batch // shards,
        "microbatches": cfg.train.microbatches,
        "examples_per_device_at_once": cfg.train.global_batch // shards // cfg.train.microbatches,
        **memory(compiled),
        "collectives": collectives(compiled.as_text()),
    }
