"""Data-parallel training (``torchrun --nproc_per_node=N``: DDP, gloo on CPU, nccl on GPU): each
rank draws its own windows, gradients are averaged, rank 0 writes."""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def ddp_setup() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def wrap(model: torch.nn.Module, world: int) -> torch.nn.Module:
    if world > 1:
        return torch.nn.parallel.DistributedDataParallel(model)
    return model


def average_gradients(model: torch.nn.Module, world: int) -> None:
    """Data-parallel gradient averaging for steps that do not go through a DDP wrapper."""
    if world <= 1:
        return
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world


def bare(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def check_ranks_in_sync(task, rank: int, world: int) -> None:
    """Data-parallel ranks must end with identical weights (else rank 0 exports one of N models):
    compare a float64 checksum of every trained module's parameters across ranks."""
    sums = torch.tensor([float(sum(p.detach().double().sum() + p.detach().double().square().sum() for p in m.parameters()))
                         for m in task.modules().values()], dtype=torch.float64)
    gathered = [torch.zeros_like(sums) for _ in range(world)]
    dist.all_gather(gathered, sums)
    in_sync = all(torch.equal(g, gathered[0]) for g in gathered)
    if rank == 0:
        log.info("ddp weights in sync: %s", in_sync)
    if not in_sync:
        raise RuntimeError(f"ddp ranks ended with different weights (checksums {[g.tolist() for g in gathered]})")
