"""The order of training images and their augmentation, as functions of the seed: the order
is a function of ``(seed, epoch)`` and the augmentation of an image a function of ``(seed,
epoch, index)``, independent of DataLoader workers and processes; so a resumed run continues
exactly, and N processes see the same global batches as one."""

from __future__ import annotations

from typing import Iterator, List

import torch

from spatialflow.errors import InputError


class TrainBatches(torch.utils.data.Sampler):
    """Batches of ``(epoch, index)`` keys for one process, from iteration ``start`` on.

    Epoch ``e`` is a permutation drawn from ``(seed, e)``; it is cut into global batches of
    ``global_batch`` images (the last incomplete one is dropped) and process ``rank`` takes its
    ``global_batch / world`` slice of each. Infinite: the loop decides when to stop.
    """

    def __init__(self, num_items: int, global_batch: int, seed: int, rank: int = 0,
                 world: int = 1, start: int = 0):
        if global_batch % world:
            raise InputError(f"train.batch_size={global_batch} is not divisible by the "
                             f"{world} processes")
        if num_items < global_batch:
            raise InputError(f"the training set has {num_items} images, fewer than "
                             f"train.batch_size={global_batch}")
        self.n, self.batch, self.seed = num_items, global_batch, seed
        self.rank, self.world, self.start = rank, world, start
        self.per_epoch = num_items // global_batch

    def __iter__(self) -> Iterator[List[tuple]]:
        it = self.start
        per_rank = self.batch // self.world
        while True:
            epoch, k = divmod(it, self.per_epoch)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            batch = perm[k * self.batch:(k + 1) * self.batch]
            yield [(epoch, i) for i in batch[self.rank * per_rank:(self.rank + 1) * per_rank]]
            it += 1


class SeededItems(torch.utils.data.Dataset):
    """Reads ``dataset[index]`` for a key ``(epoch, index)`` with the random augmentation
    seeded from ``(seed, epoch, index)`` (the caller's random state is left untouched)."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 1_000_033 + index)
            return self.dataset[index]
