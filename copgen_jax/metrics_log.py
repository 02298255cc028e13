"""Training metrics to stdout and TensorBoard event files (process 0 writes)."""
from __future__ import annotations

import logging
import os
import time

import jax
import numpy as np


class MetricLogger:
    def __init__(self, workdir, global_batch: int):
        self.global_batch = global_batch
        self.writer = None
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(os.path.join(os.fspath(workdir), "tensorboard"))
        self._last = (None, time.perf_counter())

    def write(self, step: int, metrics: dict) -> dict:
        """Fetch ``metrics``, add throughput since the last write, and log them."""
        values = {k: float(np.asarray(v)) for k, v in _flatten(jax.device_get(metrics)).items()}
        last_step, last_time = self._last
        now = time.perf_counter()
        if last_step is not None and step > last_step:
            steps_per_s = (step - last_step) / (now - last_time)
            values["steps_per_s"] = steps_per_s
            values["examples_per_s"] = steps_per_s * self.global_batch
        self._last = (step, now)
        for key, value in values.items():
            if not np.isfinite(value):
                raise FloatingPointError(f"step {step}: metric {key} is {value}; lower the learning rate or "
                                         f"check the input data for NaNs")
        logging.info("step %d | %s", step, " ".join(f"{k}={v:.5g}" for k, v in sorted(values.items())))
        if self.writer:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
            self.writer.flush()
        return values

    def images(self, step: int, images: dict) -> None:
        if self.writer:
            for key, img in images.items():
                self.writer.add_image(key, np.asarray(img), step, dataformats="HWC")
            self.writer.flush()

    def close(self):
        if self.writer:
            self.writer.close()


def _flatten(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out
