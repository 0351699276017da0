"""Spreading shard models over processes with PyTorch's own launcher, torchrun.

    torchrun --nproc_per_node 4 train.py --num_shards 5 --num_slices 3 --strategy sorted-balanced
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint host:29500 train.py ...

SISA shards are independent, so the (fold, shard) jobs are dealt out round-robin by their index:
job j goes to rank j % world_size, whatever is already trained, so every rank agrees on the split
without talking. The slices of one shard stay in order on one rank. Rank 0 creates the run folder
(config, partitions, resolved weights) and holds its lock; the other ranks wait at a barrier and
then read it. Every job is seeded from (seed, fold, shard, slice), so the checkpoints are the same as
a single process's. A rank that fails makes torchrun stop the others; rerunning resumes.
Backends: gloo on CPU, nccl on CUDA (each rank on cuda:<LOCAL_RANK>).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .device import wants_cuda


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def active(self) -> bool:
        return self.size > 1

    def mine(self, jobs: list) -> list:
        """This rank's share of a list of jobs (round-robin by position)."""
        return [j for i, j in enumerate(jobs) if i % self.size == self.rank]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast(self, obj):
        """rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order (on every rank)."""
        if not self.active:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out


def setup(device: str) -> World:
    """Join the process group torchrun set up (WORLD_SIZE > 1), or run alone."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = wants_cuda(device)
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def teardown(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()
