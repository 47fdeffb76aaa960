"""Samplers: infinite shuffled training stream sharded per rank; sharded inference order;
aspect-ratio grouping of indices into batches."""
from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.distributed as dist

__all__ = ["InferenceSampler", "TrainingSampler", "batch_indices", "portrait_flags", "shared_seed", "world_info"]


def world_info() -> tuple:
    """``(rank, world_size)`` of torch.distributed, or ``(0, 1)`` when not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shared_seed(seed: int) -> int:
    """``seed`` if >= 0; otherwise a random seed drawn on rank 0 and broadcast to every rank."""
    if seed >= 0:
        return int(seed)
    drawn = int.from_bytes(os.urandom(4), "little") % (2**31 - 1)  # leaves torch's global RNG alone
    if world_info()[1] > 1:
        obj = [drawn]
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


def batch_indices(indices: Iterable[int], portrait: Sequence[bool], batch_size: int, group: bool = True) -> Iterator[list[int]]:
    """Batch a stream of indices. With ``group`` a batch holds only landscape/square or only
    portrait images (``portrait[i]``: height > width of image ``i``, known from the dataset
    dicts, so no image is read to decide). A finite stream ends with its partial batches."""
    buckets: list[list[int]] = [[], []]
    for i in indices:
        bucket = buckets[int(bool(portrait[i])) if group else 0]
        bucket.append(i)
        if len(bucket) == batch_size:
            yield bucket[:]
            del bucket[:]
    for bucket in buckets:
        if bucket:
            yield bucket


def portrait_flags(dataset: Sequence[dict]) -> list[bool]:
    """``height > width`` of each dataset dict (False when the size is unknown)."""
    return [bool(d.get("height") and d.get("width") and d["height"] > d["width"]) for d in dataset]
