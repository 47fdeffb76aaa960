"""Distributed helpers over ``torch.distributed`` (all are no-ops in a single process)."""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "all_gather",
    "broadcast_array",
    "broadcast_object",
    "forget_process_groups",
    "gather",
    "get_local_rank",
    "get_local_size",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "max_over_processes",
    "reduce_dict",
    "shared_random_seed",
    "synchronize",
]

# Process group of the processes on this machine; set by engine.launch.
_LOCAL_PROCESS_GROUP: Any | None = None
_LOCAL_SIZE = 1


def set_local_process_group(group: Any, local_size: int) -> None:
    """Record the per-machine group (called by :func:`retinakit.engine.launch`)."""
    global _LOCAL_PROCESS_GROUP, _LOCAL_SIZE
    _LOCAL_PROCESS_GROUP, _LOCAL_SIZE = group, local_size


def forget_process_groups() -> None:
    """Drop this module's references to process groups (the per-machine group, the cached CPU
    group). Called before ``destroy_process_group`` so that no group outlives it: a gloo group
    still referenced at interpreter exit is torn down with its threads running (SIGABRT,
    "terminate called without an active exception"), and a later ``init_process_group`` in the
    same process must not reuse a destroyed group."""
    global _LOCAL_PROCESS_GROUP, _LOCAL_SIZE
    _LOCAL_PROCESS_GROUP, _LOCAL_SIZE = None, 1
    _cpu_group.cache_clear()


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes in the default group (1 without torch.distributed)."""
    return dist.get_world_size() if _initialized() else 1


def get_rank() -> int:
    """Global rank of this process (0 without torch.distributed)."""
    return dist.get_rank() if _initialized() else 0


def get_local_rank() -> int:
    """Rank of this process within its machine."""
    if not _initialized():
        return 0
    if _LOCAL_PROCESS_GROUP is not None:
        return dist.get_rank(group=_LOCAL_PROCESS_GROUP)
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))


def get_local_size() -> int:
    """Number of processes on this machine."""
    if not _initialized():
        return 1
    import os

    return int(os.environ.get("LOCAL_WORLD_SIZE", _LOCAL_SIZE))


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """Barrier over all processes (no-op in a single process)."""
    if get_world_size() > 1:
        dist.barrier()


@functools.lru_cache
def _cpu_group() -> Any:
    """A gloo group for gathering Python objects (NCCL cannot move CPU objects)."""
    if dist.get_backend() == "nccl":
        return dist.new_group(backend="gloo")
    return None  # the default group; None keeps no reference to it (see forget_process_groups)


def max_over_processes(value: int) -> int:
    """The largest ``value`` over all processes (a CPU all-reduce in the gloo group, also under
    NCCL; ``value`` itself in a single process). Every process must call it."""
    if get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_cpu_group())
    return int(t.item())


def all_gather(data: Any) -> list[Any]:
    """Gather a picklable object from every process; returns a list indexed by rank."""
    if get_world_size() == 1:
        return [data]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, data, group=_cpu_group())
    return out


def gather(data: Any, dst: int = 0) -> list[Any]:
    """Gather a picklable object on rank ``dst``; other ranks get ``[]``."""
    if get_world_size() == 1:
        return [data]
    group = _cpu_group()
    if get_rank() == dst:
        out: list[Any] = [None] * get_world_size()
        dist.gather_object(data, out, dst=dst, group=group)
        return out
    dist.gather_object(data, None, dst=dst, group=group)
    return []


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every process (pickled; ``obj`` of the others is ignored).
    Every process must call it."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_cpu_group())
    return box[0]


def broadcast_array(array: np.ndarray | None, shape: tuple[int, ...], dtype: np.dtype, src: int = 0) -> np.ndarray:
    """The numpy ``array`` of rank ``src`` on every process, received straight into a new
    array of ``shape`` and ``dtype`` (no pickling, no intermediate copy: a gloo CPU
    broadcast, also under NCCL). Every process must call it with the same shape and dtype."""
    if get_world_size() == 1:
        assert array is not None
        return array
    out = np.ascontiguousarray(array) if get_rank() == src else np.empty(shape, dtype=dtype)
    if out.size:
        dist.broadcast(torch.from_numpy(out.reshape(-1).view(np.uint8)), src=src, group=_cpu_group())
    return out


def reduce_dict(values: dict[str, torch.Tensor], average: bool = True) -> dict[str, torch.Tensor]:
    """Sum (or average) a dict of scalar tensors over processes; same keys on every rank."""
    if get_world_size() == 1:
        return values
    with torch.no_grad():
        names = sorted(values)
        stacked = torch.stack([values[k].detach().float() for k in names])
        dist.all_reduce(stacked)
        if average:
            stacked /= get_world_size()
        return dict(zip(names, stacked))


def shared_random_seed() -> int:
    """A random int drawn on rank 0 and shared with every process."""
    seed = int(np.random.randint(2**31))
    return all_gather(seed)[0]
