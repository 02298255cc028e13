"""In-memory, seeded example sources for training before (or without) real shards."""
from __future__ import annotations

import grain


class SeededSource:
    """``num_examples`` examples, each reproducible from (seed, index), visited in a seeded
    shuffled order per epoch; each process yields only its rows of every global batch.

    Subclasses define ``example(index)`` and ``collate(rows)``. The order and the position
    are Grain's: ``MapDataset.range(n).shuffle(seed).repeat()`` (a fresh permutation per
    epoch) in global batches, read without threads. ``get_state()`` is the Grain iterator's
    (``{"next_index": batches consumed}``), so a restored source continues with exactly
    the batch an uninterrupted run sees.
    """

    def __init__(self, global_batch: int, seed: int, process_index: int = 0, process_count: int = 1,
                 num_examples: int = 256):
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
        self.seed, self.num_examples, self.global_batch = seed, num_examples, global_batch
        self.local = global_batch // process_count
        self.offset = process_index * self.local
        rows = slice(self.offset, self.offset + self.local)
        self.dataset = (grain.MapDataset.range(num_examples).shuffle(seed=seed).repeat()
                        .batch(global_batch).map(lambda idx: self.collate([self.example(int(i)) for i in idx[rows]])))
        self._it = self.dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)).__iter__()

    def example(self, index: int):
        raise NotImplementedError

    def collate(self, rows: list):
        raise NotImplementedError

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    def get_state(self) -> dict:
        return self._it.get_state()

    def set_state(self, state) -> None:
        if "position" in state:  # a checkpoint from before Grain: its position carries over, the order is Grain's
            state = {"next_index": int(state["position"]) // self.global_batch}
        self._it.set_state(dict(state))
