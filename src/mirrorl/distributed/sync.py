"""Weight sync through a broadcast group: learner rank 0 sends, every rollout worker receives.

The object store (the default) copies each version into shared memory and each worker reads it
from there, through Ray's object transfer when the worker is on another machine. A broadcast
group is a torch.distributed process group of its own over learner rank 0 (rank 0 of the group)
and the N workers (ranks 1..N): NCCL between GPUs, so the weights never leave the devices, gloo
on CPU. The layout (`weights.Slot`s) is sent once, when the group forms; each version is then
one broadcast per bucket.

The group is separate from the learners' own torch.distributed group (a process has one default
group) and is built directly on a TCP store, so it can be formed again with a replacement worker.
A collective that fails (a member died, or `timeout` passed) leaves the group unusable: it is
reported as `CollectiveFailed` and the driver forms a new group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from mirrorl.distributed.weights import Slot, bucket_sizes


@dataclass
class CollectiveFailed:
    """What a member reports when its part of a collective failed (one line)."""

    why: str


def pin_interface(interface: str | None) -> None:
    """Make gloo and NCCL bind to `interface` (e.g. 'lo', 'eth0'); None leaves their own choice."""
    if interface:
        os.environ["GLOO_SOCKET_IFNAME"] = interface
        os.environ["NCCL_SOCKET_IFNAME"] = interface


class SyncGroup:
    """One member of a broadcast group; rank 0 hosts the TCP store and sends."""

    def __init__(self, address: str, port: int, rank: int, world: int, slots: list[Slot], device: torch.device,
                 timeout: float) -> None:
        wait = timedelta(seconds=timeout)
        self.store = dist.TCPStore(address, port, world, is_master=rank == 0, timeout=wait)
        if device.type == "cuda":
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = wait
            self.group: dist.ProcessGroup = dist.ProcessGroupNCCL(self.store, rank, world, options)
        else:
            self.group = dist.ProcessGroupGloo(self.store, rank, world, wait)
        self.rank, self.slots = rank, slots
        # receivers keep their buffers from version to version; the sender packs a new set each time
        self.buckets = [] if rank == 0 else [torch.empty(size, dtype=torch.uint8, device=device)
                                             for size in bucket_sizes(slots)]

    def broadcast(self, buckets: list[Tensor] | None = None) -> list[Tensor]:
        """Rank 0 sends `buckets`; the others receive into their buffers, which they return."""
        if self.rank == 0:
            assert buckets is not None
            self.buckets = buckets
        options = dist.BroadcastOptions()
        options.rootRank = 0
        for bucket in self.buckets:
            self.group.broadcast([bucket], options).wait()
        return self.buckets
