"""Start one process per device (DDP), on one or several machines; or adopt torchrun's.

NCCL is used when CUDA is available, gloo otherwise (CPU processes, e.g. for tests).

Under ``torchrun --max-restarts N`` a failed worker makes torchrun restart the whole group
with ``TORCHELASTIC_RESTART_COUNT`` incremented. The restarted processes reach the same
rendezvous store as the first round (torchrun keeps one store server for the whole job), where
the first round's process-group keys (each rank's gloo/NCCL address) are still present: a new
rank could read its peer's dead address from them and fail with "connection refused". So the
group of each round is built on its own key space of that store (:func:`torchrun_store`).
"""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..utils import comm

__all__ = ["default_backend", "elastic_restart_count", "find_free_port", "launch", "torchrun_store"]

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT = timedelta(minutes=30)
# dist_url of a store served by the launching process (launch with dist_url="auto").
_PARENT_STORE_SCHEME = "parentstore://"


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def elastic_restart_count() -> int:
    """How many times torchrun has restarted this worker group (0: first round, or not torchrun)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def torchrun_store(world: int, rank: int, timeout: timedelta) -> dist.Store | None:
    """The rendezvous store of this torchrun round, under a key prefix of its own (see module doc).

    ``None`` when not started by torchrun (then ``env://`` is used as is).
    """
    if "TORCHELASTIC_RESTART_COUNT" not in os.environ or "MASTER_ADDR" not in os.environ:
        return None
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
        is_master=rank == 0 and not agent_hosts, timeout=timeout,
    )
    return dist.PrefixStore(f"retinakit/round_{elastic_restart_count()}/", store)


def _set_device(local_rank: int) -> None:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: Sequence[Any] = (),
    backend: str | None = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> Any:
    """Run ``main_func(*args)`` in ``num_gpus_per_machine * num_machines`` processes.

    * Under ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK set) the process group is initialised
      from the environment and ``main_func`` runs in this process.
    * With a world size of 1, ``main_func`` runs here without torch.distributed.
    * Otherwise this machine spawns ``num_gpus_per_machine`` processes. ``dist_url``:
      ``tcp://HOST:PORT`` of machine 0 (``"auto"`` picks a free local port; single machine only).
      Without CUDA each "gpu" is a CPU process (gloo).
    """
    backend = backend or default_backend()
    if _under_torchrun():
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        _init_group(
            backend, "env://", world, rank, int(os.environ["LOCAL_RANK"]),
            local_world, num_machines_from_env(local_world), timeout, store=torchrun_store(world, rank, timeout),
        )
        try:
            return main_func(*args)
        finally:
            _destroy()
    world = num_gpus_per_machine * num_machines
    if world <= 1:
        return main_func(*args)
    parent_store = None
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("--dist-url=auto only works on a single machine; give tcp://HOST:PORT of machine 0.")
        # This process serves the rendezvous store on a port the OS assigns while it binds, so no
        # other process can take the port between choosing and binding it (as with a port picked
        # by find_free_port and bound later by rank 0). The workers connect to it as clients.
        parent_store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, timeout=timeout, wait_for_workers=False)
        dist_url = f"{_PARENT_STORE_SCHEME}127.0.0.1:{parent_store.port}"
    mp.start_processes(
        _worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world, num_gpus_per_machine, machine_rank, num_machines, dist_url, tuple(args), backend, timeout),
        daemon=False,
        start_method="spawn",
    )
    del parent_store  # kept alive until every worker has finished
    return None


def num_machines_from_env(local_world: int) -> int:
    return max(int(os.environ["WORLD_SIZE"]) // max(local_world, 1), 1)


def _init_group(
    backend: str, url: str, world: int, rank: int, local_rank: int, local_world: int, num_machines: int, timeout: timedelta,
    store: dist.Store | None = None,
) -> None:
    _set_device(local_rank)
    if store is None and url.startswith(_PARENT_STORE_SCHEME):
        host, port = url[len(_PARENT_STORE_SCHEME):].rsplit(":", 1)
        store = dist.TCPStore(host, int(port), world, is_master=False, timeout=timeout)
    if store is not None:
        dist.init_process_group(backend=backend, store=store, world_size=world, rank=rank, timeout=timeout)
    else:
        dist.init_process_group(backend=backend, init_method=url, world_size=world, rank=rank, timeout=timeout)
    # One group per machine (every process must create every group, in the same order).
    for m in range(num_machines):
        ranks = list(range(m * local_world, (m + 1) * local_world))
        group = dist.new_group(ranks)
        if m == rank // local_world:
            comm.set_local_process_group(group, local_world)
    comm.synchronize()


def _destroy() -> None:
    if dist.is_initialized():
        comm.forget_process_groups()  # first: no reference may keep a group alive past its destruction
        dist.destroy_process_group()


def _worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world: int,
    per_machine: int,
    machine_rank: int,
    num_machines: int,
    dist_url: str,
    args: tuple,
    backend: str,
    timeout: timedelta,
) -> None:
    rank = machine_rank * per_machine + local_rank
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(per_machine))
    try:
        _init_group(backend, dist_url, world, rank, local_rank, per_machine, num_machines, timeout)
    except Exception as e:
        logger.error(f"Process group initialisation failed at {dist_url} (rank {rank}/{world}): {e}")
        raise
    try:
        main_func(*args)
    finally:
        _destroy()
