"""Samplers: infinite shuffled training stream sharded per rank; sharded inference order;
aspect-ratio grouping of mapped images into batches."""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["InferenceSampler", "TrainingSampler", "group_by_aspect_ratio", "shared_seed", "world_info"]


def world_info() -> tuple:
    """``(rank, world_size)`` of torch.distributed, or ``(0, 1)`` when not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shared_seed(seed: int) -> int:
    """``seed`` if >= 0; otherwise a random seed drawn on rank 0 and broadcast to every rank."""
    if seed >= 0:
        return int(seed)
    drawn = torch.randint(2**31 - 1, (1,), generator=torch.Generator().manual_seed(torch.seed() % 2**63))
    if world_info()[1] > 1:
        obj = [int(drawn)]
        dist.broadcast_object_list(obj, src=0)
        return int(obj[0])
    return int(drawn)


class TrainingSampler:
    """Infinite stream of indices in ``[0, size)``: a new permutation each epoch, the same on
    every rank (one ``seed``); rank ``r`` of ``w`` takes positions ``r, r + w, ...``."""

    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, rank: int | None = None, world_size: int | None = None) -> None:
        if size <= 0:
            raise ValueError(f"TrainingSampler needs a non-empty dataset, got size {size}.")
        r, w = world_info()
        self.size, self.shuffle, self.seed = size, shuffle, int(seed)
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size

    def _infinite(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed)
        while True:
            yield from (torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)).tolist()

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(self._infinite(), self.rank, None, self.world_size)


class InferenceSampler:
    """Indices of rank ``r``'s contiguous shard of ``[0, size)``; shards cover every index once."""

    def __init__(self, size: int, rank: int | None = None, world_size: int | None = None) -> None:
        r, w = world_info()
        self.size = size
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size
        per, extra = divmod(size, self.world_size)
        shard_sizes = [per + (1 if i < extra else 0) for i in range(self.world_size)]
        self.begin = sum(shard_sizes[: self.rank])
        self.end = self.begin + shard_sizes[self.rank]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.begin, self.end))

    def __len__(self) -> int:
        return self.end - self.begin


def group_by_aspect_ratio(items: Iterable[dict[str, Any] | None], batch_size: int, group: bool = True) -> Iterator[list[dict[str, Any]]]:
    """Batch mapped dicts; with ``group`` a batch holds only landscape (w >= h) or only
    portrait images (sizes read from ``item["image"]`` ``[C, H, W]``). ``None`` items are skipped."""
    buckets: list[list[dict[str, Any]]] = [[], []]
    for item in items:
        if item is None:
            continue
        h, w = item["image"].shape[-2:]
        bucket = buckets[int(h > w) if group else 0]
        bucket.append(item)
        if len(bucket) == batch_size:
            yield bucket[:]
            del bucket[:]
