"""Index samplers for iteration-based training (the paper counts iterations, not epochs) and sharded evaluation.

- `TrainingSampler`: an endless stream of shuffled indices, epoch after epoch; epoch e is a permutation from a
  generator seeded with seed + e, so the stream is the same after a restart. With several processes, rank r
  takes `permutation[r::world_size]` of every epoch.
- `GroupedBatchSampler`: batches of images of one aspect-ratio group (0: landscape or square, 1: portrait), so a
  padded batch wastes little; `start_batch=k` resumes the batch stream at batch k by replaying indices only.
- `InferenceSampler`: each rank gets a contiguous slice; the slices cover every index exactly once.
"""
from __future__ import annotations

import itertools
from typing import Iterable, Iterator, List, Sequence, Tuple, Union

import torch
from torch.utils.data import Sampler

SampleKey = Union[int, Tuple[int, int]]


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")


class TrainingSampler(Sampler):
    """Infinite, deterministic stream of dataset indices.

    Args:
        size: dataset length (>= 1).
        shuffle: permute each epoch (else 0..size-1 in order every epoch).
        seed: epoch e uses `torch.Generator().manual_seed(seed + e)`.
        rank, world_size: this process takes indices[rank::world_size] of every epoch's order.
        with_epoch: yield `(index, epoch)` tuples instead of ints; `CocoDetection` accepts them and seeds its
            flip draw with the epoch, so augmentation changes from epoch to epoch in a single endless stream,
            whatever the number of DataLoader workers.

    Yields:
        int indices in [0, size) (or `(index, epoch)` with with_epoch=True), forever.
    """

    def __init__(
        self, size: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
        with_epoch: bool = False,
    ):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        _check_rank(rank, world_size)
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.with_epoch = with_epoch

    def epoch_indices(self, epoch: int) -> List[int]:
        """This rank's indices of one epoch, in order."""
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(self.size)
        return order[self.rank :: self.world_size].tolist()

    def __iter__(self) -> Iterator[SampleKey]:
        for epoch in itertools.count():
            indices = self.epoch_indices(epoch)
            if self.with_epoch:
                yield from ((index, epoch) for index in indices)
            else:
                yield from indices


class GroupedBatchSampler(Sampler):
    """Batches whose images share an aspect-ratio group, in a deterministic order.

    Indices are taken from `sampler` in order and put in their group's buffer; a buffer that reaches
    `batch_size` is yielded as a batch. For a finite sampler, the leftover buffers are yielded at the end
    (group 0 first) unless `drop_last`. The stream is infinite if the sampler is.

    Args:
        sampler: iterable of int indices or `(index, epoch)` keys (e.g. `TrainingSampler`).
        group_ids: group of each dataset index (e.g. `CocoDetection.aspect_ratio_groups()`).
        batch_size: images per batch (>= 1).
        start_batch: skip the first `start_batch` batches (resume after `start_batch` iterations); the
            sampler's stream is replayed without touching any image.
        drop_last: for a finite sampler, drop the incomplete leftover batches.

    Yields:
        list of `batch_size` keys (fewer only for leftovers of a finite sampler), as the sampler gave them.
    """

    def __init__(
        self, sampler: Iterable[SampleKey], group_ids: Sequence[int], batch_size: int, start_batch: int = 0,
        drop_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        if len(group_ids) == 0:
            raise ValueError("group_ids is empty")
        self.sampler = sampler
        self.group_ids = [int(g) for g in group_ids]
        self.batch_size = batch_size
        self.start_batch = start_batch
        self.drop_last = drop_last

    def _group_of(self, key: SampleKey) -> int:
        index = key[0] if isinstance(key, tuple) else key
        if not 0 <= index < len(self.group_ids):
            raise ValueError(f"index {index} has no group: group_ids covers 0..{len(self.group_ids) - 1}")
        return self.group_ids[index]

    def _all_batches(self) -> Iterator[List[SampleKey]]:
        buffers = {}
        for key in self.sampler:
            buffer = buffers.setdefault(self._group_of(key), [])
            buffer.append(key)
            if len(buffer) == self.batch_size:
                yield list(buffer)
                buffer.clear()
        if not self.drop_last:
            yield from (buffers[g] for g in sorted(buffers) if buffers[g])

    def __iter__(self) -> Iterator[List[SampleKey]]:
        return itertools.islice(self._all_batches(), self.start_batch, None)

    def __len__(self) -> int:
        """Batches left after `start_batch`; only for a finite sampler with a length."""
        if not hasattr(self.sampler, "__len__"):
            raise TypeError("GroupedBatchSampler over an infinite sampler has no length")
        counts = {}
        for key in self.sampler:
            group = self._group_of(key)
            counts[group] = counts.get(group, 0) + 1
        rounding = 0 if self.drop_last else self.batch_size - 1
        total = sum((count + rounding) // self.batch_size for count in counts.values())
        return max(0, total - self.start_batch)


class InferenceSampler(Sampler):
    """This rank's contiguous, non-overlapping share of 0..size-1 (shares differ in length by at most one).

    Args:
        size: dataset length (>= 0).
        rank, world_size: rank r gets [size * r // world_size, size * (r + 1) // world_size).
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        _check_rank(rank, world_size)
        self.size = size
        self.rank = rank
        self.world_size = world_size
        self.begin = size * rank // world_size
        self.end = size * (rank + 1) // world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.begin, self.end))

    def __len__(self) -> int:
        return self.end - self.begin
