"""The deterministic order in which a training run sees its examples, independent of resumption.

The run is a sequence of global micro-batches: micro-batch `m` holds the global examples `m * B .. m * B + B - 1`
(B = per-device batch size), and process `p` of `P` trains on the micro-batches `m % P == p`. Global example `g` of a
map-style dataset of `N` rows is row `permutation(epoch)[g % N]` with `epoch = g // N`, and it is augmented with a
generator seeded by `(seed, g)`. So the data of any step is a pure function of the seed and the step: a run resumed
from a checkpoint at step `s` starts at micro-batch `s * accumulation * P` and continues exactly as an uninterrupted
run would. DataLoader workers split the process's micro-batches round-robin, in the order the DataLoader collects
them, so the number of workers does not change the order either.

A streamed dataset (`IterableDataset`) is shuffled with a buffer seeded per epoch and read from the start; on resume
the examples before the checkpoint are skipped (read, not decoded or augmented).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset as TorchIterableDataset
from torch.utils.data import get_worker_info

from training.data.sources import SegmentationData

# (image, label, generator) -> one training example (a dict of tensors).
ExampleTransform = Callable[[np.ndarray, np.ndarray, np.random.Generator], dict]


def epoch_permutation(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The row order of one epoch."""
    return np.random.default_rng([seed, epoch]).permutation(num_rows)


class TrainingStream(TorchIterableDataset):
    """Endless training examples of one process, in the run's global order, from micro-batch `start` on.

    Args:
        data: the training split.
        transform: augmentation and preprocessing of one example.
        batch_size: examples per micro-batch (per process).
        seed: the run's seed.
        start: global micro-batches already consumed by all processes together (a multiple of `num_processes`).
        process_index, num_processes: this process and how many share the run.
        shuffle_buffer_size: buffer of a streamed dataset's shuffle.
    """

    def __init__(
        self,
        data: SegmentationData,
        transform: ExampleTransform,
        batch_size: int,
        seed: int,
        start: int = 0,
        process_index: int = 0,
        num_processes: int = 1,
        shuffle_buffer_size: int = 1000,
    ) -> None:
        if start % num_processes:
            raise ValueError(f"start={start} must be a multiple of num_processes={num_processes}")
        self.data = data
        self.transform = transform
        self.batch_size = batch_size
        self.seed = seed
        self.start = start
        self.process_index = process_index
        self.num_processes = num_processes
        self.shuffle_buffer_size = shuffle_buffer_size

    def _own_micro_batches(self) -> Iterator[int]:
        """Global micro-batch indices this process (and this DataLoader worker) produces, in order."""
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        for count, micro_batch in enumerate(itertools.count(self.start + self.process_index, self.num_processes)):
            if count % workers == worker_id:
                yield micro_batch

    def _example(self, row: dict, global_index: int, row_index: int | None) -> dict:
        image, label = self.data.decode(row, row_index)
        example = self.transform(image, label, np.random.default_rng([self.seed, global_index]))
        example["global_index"] = torch.tensor(global_index)
        return example

    def __iter__(self) -> Iterator[dict]:
        if self.data.streaming:
            yield from self._iterate_stream()
            return
        num_rows = len(self.data)
        if num_rows == 0:
            raise ValueError(f"the training data {self.data.name} is empty")
        permutation_epoch, permutation = -1, None
        for micro_batch in self._own_micro_batches():
            for global_index in range(micro_batch * self.batch_size, (micro_batch + 1) * self.batch_size):
                epoch, position = divmod(global_index, num_rows)
                if epoch != permutation_epoch:
                    permutation_epoch, permutation = epoch, epoch_permutation(num_rows, self.seed, epoch)
                row_index = int(permutation[position])
                yield self._example(self.data.dataset[row_index], global_index, row_index)

    def _iterate_stream(self) -> Iterator[dict]:
        own = self._own_micro_batches()
        wanted = next(own)
        global_index = 0
        for epoch in itertools.count():
            stream = self.data.dataset.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer_size)
            stream.set_epoch(epoch)
            produced = False
            for row in stream:
                produced = True
                micro_batch = global_index // self.batch_size
                if micro_batch == wanted:
                    yield self._example(row, global_index, None)
                    if (global_index + 1) % self.batch_size == 0:
                        wanted = next(own)
                global_index += 1
            if not produced:
                raise ValueError(f"the training stream {self.data.name} is empty")


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack examples; `pixel_values` first (the Trainer and accelerate read the batch size off the first tensor)."""
    keys = ["pixel_values", *(key for key in examples[0] if key != "pixel_values")]
    return {key: torch.stack([example[key] for example in examples]) for key in keys}


__all__ = ["TrainingStream", "collate", "epoch_permutation"]
