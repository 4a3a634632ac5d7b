"""Seeded, resumable, world-size-aware batch order.

Step ``s`` of a run always uses the same global batch: epoch ``s // steps_per_epoch`` is a
permutation of the data drawn from ``(seed, epoch)``, cut into global batches of
``batch_size × world`` samples (the last incomplete one is dropped); process ``rank`` takes
its contiguous slice. One process with batch ``B × W`` therefore sees exactly the samples
of ``W`` processes with batch ``B``, and a run resumed at step ``s`` replays the same data.
Batches are lists of ``(epoch, index)`` keys, which the datasets of
:mod:`btnet_adapters.data` accept directly (no ``set_epoch`` needed in worker processes).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..errors import ConfigError


class EpochBatchSampler:
    """Batches of ``(epoch, index)`` keys for steps ``start_step .. stop_step - 1``.

    Args:
        num_samples: dataset size.
        batch_size: samples per process and step.
        seed: seed of the per-epoch permutations.
        start_step: first step to produce (resume point).
        stop_step: one past the last step.
        rank: this process's rank.
        world: number of processes.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, start_step: int, stop_step: int,
                 rank: int = 0, world: int = 1) -> None:
        self.num_samples, self.batch_size, self.seed = int(num_samples), int(batch_size), int(seed)
        self.rank, self.world = int(rank), int(world)
        self.start_step, self.stop_step = int(start_step), int(stop_step)
        self.steps_per_epoch = steps_per_epoch(self.num_samples, self.batch_size, self.world)
        if not 0 <= self.start_step <= self.stop_step:
            raise ConfigError(f"need 0 <= start_step <= stop_step, got {start_step} and {stop_step}")

    def permutation(self, epoch: int) -> np.ndarray:
        """Sample order of ``epoch``."""
        return np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(self.num_samples)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        glob = self.batch_size * self.world
        epoch, order = -1, np.empty(0, dtype=np.int64)
        for step in range(self.start_step, self.stop_step):
            e, b = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, order = e, self.permutation(e)
            mine = order[b * glob + self.rank * self.batch_size:][: self.batch_size]
            yield [(epoch, int(i)) for i in mine]

    def __len__(self) -> int:
        return self.stop_step - self.start_step


def steps_per_epoch(num_samples: int, batch_size: int, world: int = 1) -> int:
    """Full global batches per epoch; an error when the data cannot fill one."""
    steps = num_samples // (batch_size * world)
    if steps < 1:
        raise ConfigError(f"{num_samples} images cannot fill one global batch of {batch_size} × {world} "
                          "processes; lower batch_size")
    return steps
