"""Small data helpers of the tokenizers: a seeded in-memory pixel source and preview images."""
from __future__ import annotations

import colorsys

import grain
import numpy as np

from copgen_jax.modalities import CATEGORICAL, Modality
from copgen_jax.data.seeded import SeededSource


class RandomPixels(SeededSource):
    """Seeded smooth random fields in the network range, shaped like ``modality.pixel_shape``.

    Categorical modalities get blobby class maps as one-hot in {-1, 1}. It exercises
    training and encoding before real shards exist; a model trained on it says nothing
    about quality on real data.
    """

    def __init__(self, modality: Modality, global_batch, seed, process_index=0, process_count=1,
                 num_examples=256):
        super().__init__(global_batch, seed, process_index, process_count, num_examples)
        self.modality = modality

    def example(self, index: int) -> np.ndarray:
        m = self.modality
        c, size, _ = m.pixel_shape
        rng = np.random.default_rng([self.seed, index])
        cells = max(size // 8, 1)
        coarse = rng.standard_normal((c, cells, cells))
        block = -(-size // cells)
        field = np.kron(coarse, np.ones((block, block)))[:, :size, :size]
        if m.kind == CATEGORICAL:
            return (2.0 * np.eye(c, dtype=np.float32)[np.argmax(field, 0)].transpose(2, 0, 1) - 1.0)
        return np.tanh(0.7 * field).astype(np.float32)

    def collate(self, rows):
        return {"pixels": np.stack(rows)}


def palette(num_classes: int) -> np.ndarray:
    """Distinct colours (K, 3) uint8 for class maps."""
    hues = [(i * 0.618034) % 1.0 for i in range(num_classes)]
    return np.array([[int(255 * v) for v in colorsys.hsv_to_rgb(h, 0.75, 0.95)] for h in hues], np.uint8)


def _render(m: Modality, x: np.ndarray, lo=None, hi=None):
    """(C, H, W) network range -> (H, W, 3) uint8; images use the [lo, hi] stretch."""
    if m.kind == CATEGORICAL:
        return palette(x.shape[0])[np.argmax(x, 0)]
    rgb = x[:3] if x.shape[0] >= 3 else np.repeat(x[:1], 3, 0)
    scaled = (rgb.transpose(1, 2, 0) - lo) / np.maximum(hi - lo, 1e-6)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def preview(m: Modality, inputs: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Rows of ``input | reconstruction`` for (N, C, H, W) network-range arrays, HWC uint8.

    Images share one 2-98 % stretch per row, taken from the input, so colours compare.
    """
    rows = []
    for x, y in zip(inputs, outputs):
        lo = hi = None
        if m.kind != CATEGORICAL:
            shown = x[:3] if x.shape[0] >= 3 else x[:1]
            lo, hi = np.percentile(shown, 2), np.percentile(shown, 98)
        rows.append(np.concatenate([_render(m, x, lo, hi), _render(m, y, lo, hi)], axis=1))
    return np.concatenate(rows, axis=0)


class PresentPixels(grain.DatasetIterator):
    """Batches of one modality from a pixel pipeline, skipping records where it is absent.

    Wraps a Grain iterator of single records (``{"pixels": {name: (1, ...)},
    "present": {name: (1,)}}``) and collects ``batch`` present ones. Between
    batches nothing is buffered, so the wrapped iterator's state is the whole
    state and resumption is exact; being a Grain iterator itself, each process
    checkpoints its own state.
    """

    def __init__(self, records, name: str, batch: int, max_skips: int = 100_000):
        super().__init__(records)
        self.records, self.name, self.batch, self.max_skips = records, name, batch, max_skips

    def __next__(self):
        rows, skipped = [], 0
        while len(rows) < self.batch:
            rec = next(self.records)
            if bool(rec["present"][self.name][0]):
                rows.append(rec["pixels"][self.name][0])
            else:
                skipped += 1
                if skipped > self.max_skips:
                    raise ValueError(f"{self.name}: {skipped} records in a row lack this modality; "
                                     "do the pixel shards hold it at all?")
        return {"pixels": np.stack(rows).astype(np.float32)}

    def get_state(self):
        return self.records.get_state()

    def set_state(self, state):
        self.records.set_state(state)


def pixel_batches(pixel_dir: str, modality: Modality, batch_size: int, split: str = "train",
                  limit: int | None = None):
    """(B, *pixel_shape) arrays of ``modality`` from a pixel shard set, in shard order, present records only.

    Deterministic and unshuffled (evaluation, scale factors); the last batch may
    be smaller; ``limit`` caps the number of batches.
    """
    from copgen_jax.data import shards
    from copgen_jax.data import schema
    from copgen_jax.data import tfrecord
    from copgen_jax.modalities import Registry
    one = Registry([modality])
    rows, done = [], 0
    for path in shards.shard_files(pixel_dir, split):
        for i, data in enumerate(tfrecord.read_records(path)):
            rec = schema.decode_record(data, one, schema.PIXELS, where=f"{path}: record {i}")
            if not rec["present"][modality.name]:
                continue
            rows.append(rec["values"][modality.name])
            if len(rows) == batch_size:
                yield np.stack(rows)
                rows, done = [], done + 1
                if limit is not None and done >= limit:
                    return
    if rows:
        yield np.stack(rows)
