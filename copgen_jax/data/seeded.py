"""In-memory, seeded example sources for training before (or without) real shards."""
from __future__ import annotations

import numpy as np


class SeededSource:
    """``num_examples`` examples, each reproducible from (seed, index), visited in a seeded
    shuffled order per epoch; each process yields only its rows of every global batch.

    Subclasses define ``example(index)`` and ``collate(rows)``. The position is the whole
    state, so a restored source continues with exactly the batch an uninterrupted run sees.
    """

    def __init__(self, global_batch: int, seed: int, process_index: int = 0, process_count: int = 1,
                 num_examples: int = 256):
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
        self.seed, self.num_examples, self.global_batch = seed, num_examples, global_batch
        self.local = global_batch // process_count
        self.offset = process_index * self.local
        self.position = 0  # global examples consumed

    def example(self, index: int):
        raise NotImplementedError

    def collate(self, rows: list):
        raise NotImplementedError

    def _index(self, position: int) -> int:
        epoch, within = divmod(position, self.num_examples)
        return int(np.random.default_rng([self.seed, epoch, 7]).permutation(self.num_examples)[within])

    def __iter__(self):
        return self

    def __next__(self):
        start = self.position + self.offset
        rows = [self.example(self._index(start + i)) for i in range(self.local)]
        self.position += self.global_batch
        return self.collate(rows)

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state) -> None:
        self.position = int(state["position"])
