"""Training metrics to stdout and TensorBoard event files (process 0 writes).

The workdir may be a URI (``gs://...``): event files are then written through
``copgen_jax.storage`` (epath), each rewritten whole at every flush, because
object stores cannot append (metrics files are small; flushes are per log step).
tensorboardX's own ``gs://`` writer does the same, but through
``google-cloud-storage`` and its credentials, not through epath and ``gcsfs``
as every other file of a run.
"""
from __future__ import annotations

import io
import logging
import os
import threading
import time

import jax
import numpy as np

from copgen_jax import storage


class MetricLogger:
    def __init__(self, workdir, global_batch: int):
        self.global_batch = global_batch
        self.writer = None
        if jax.process_index() == 0:
            self.writer = summary_writer(os.fspath(storage.path(workdir) / "tensorboard"))
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


def summary_writer(logdir: str):
    """A tensorboardX ``SummaryWriter`` for a local directory or a URI."""
    from tensorboardX import SummaryWriter, record_writer
    if not storage.is_local(logdir):
        storage.path(logdir).exists()  # a missing filesystem package fails here, naming it
        # tensorboardX picks the writer by scheme; ours replaces its own gs/s3 ones so
        # every remote file goes through one layer (and one dependency: gcsfs).
        record_writer.register_writer_factory(storage.scheme(logdir), _RemoteEvents())
    return SummaryWriter(logdir)


class _RemoteEvents:
    """tensorboardX writer factory for URIs."""

    def open(self, path):
        return _RemoteEventFile(path)

    def directory_check(self, path):
        storage.path(path).mkdir(parents=True, exist_ok=True)


class _RemoteEventFile:
    """An event file on a URI, buffered and uploaded whole at each flush."""

    def __init__(self, path):
        self.path, self._buffer, self._lock, self._closed = path, io.BytesIO(), threading.Lock(), False

    def write(self, data):
        with self._lock:
            self._buffer.write(data)

    def flush(self):  # called by tensorboardX's writer thread and by SummaryWriter.flush
        with self._lock:
            if not self._closed:
                storage.path(self.path).write_bytes(self._buffer.getvalue())

    def close(self):  # tensorboardX's exit hook may close again, after the run's own close
        self.flush()
        self._closed = True
