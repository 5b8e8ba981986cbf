"""What runs inside one Ray actor: a policy replica that generates, trains as a learner rank, or both.

A plain class (Ray wraps it with `ray.remote` in `mirrorl.distributed.cluster`), so it can be
tested and read without Ray. One replica per actor; the same class serves the three roles:
  - rollout worker: the engine over the replica; `load_weights` installs a published version;
  - learner rank: `join` sets up torch.distributed and a data-parallel `LocalTrainer`;
  - both (colocated placement): the engine runs the learner's own parameters, nothing moves.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mirrorl.config import Config
from mirrorl.distributed.sync import CollectiveFailed, SyncGroup, pin_interface
from mirrorl.distributed.weights import Slot, digest, layout, pack, unpack
from mirrorl.models import first_line
from mirrorl.rollout.engine import Engine
from mirrorl.train.trainer import LocalTrainer, StepShare
from mirrorl.types import GenerateResult, Request, SamplingParams, TrainBatch


def free_port() -> int:
    """A TCP port free on this machine now (for torch.distributed's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


class PolicyActor:
    """One policy replica in its own process."""

    def __init__(self, config: dict[str, Any], policy: str) -> None:
        from transformers.utils import logging as hf_logging

        from mirrorl.recipes import open_policy, seed_everything  # the recipes import the whole runtime

        hf_logging.disable_progress_bar()  # N actors' loading bars would bury the driver's output
        cfg = Config.model_validate(config)
        torch.set_num_threads(cfg.distributed.threads_per_actor)
        seed_everything(cfg.run.seed)
        self.cfg = cfg
        self.trainer: LocalTrainer | None = None  # set by `join`
        self.sync_group: SyncGroup | None = None  # set by `join_sync`
        self.gathered: dict[str, torch.Tensor] | None = None  # FSDP2 learner: the full weights (`gather`)
        self.error: str | None = None
        try:
            self.model, self.tokenizer = open_policy(cfg, policy)
        except ValueError as err:  # a policy this machine cannot load: reported by `ready`, raised by the driver
            self.error = str(err)
            return
        self.model.eval()
        self.engine = Engine(self.model, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)

    def ready(self) -> str | None:
        """None when the policy loaded, else why not (one line)."""
        return self.error

    def pid(self) -> int:
        return os.getpid()

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    # learner rank

    def rendezvous(self) -> tuple[str, int]:
        """Address and a free port on this actor's machine: rank 0's, for the group's TCP store."""
        import ray

        interface = self.cfg.distributed.network_interface
        return ("127.0.0.1" if interface == "lo" else ray.util.get_node_ip_address()), free_port()

    def join(self, rank: int, world: int, address: str, port: int, interface: str | None) -> None:
        """Become rank `rank` of the learner group (gloo on CPU, NCCL on CUDA)."""
        pin_interface(interface)
        backend = "nccl" if self.model.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=self.cfg.distributed.collective_timeout))
        self.trainer = LocalTrainer.from_config(self.model, self.tokenizer, self.cfg, distributed=world > 1)

    @property
    def learner(self) -> LocalTrainer:
        if self.trainer is None:
            raise RuntimeError("this actor has not joined the learner group")
        return self.trainer

    def train_share(self, batch: TrainBatch, lr: float) -> StepShare:
        self.gathered = None
        return self.learner.train_share(batch, lr)

    def gather(self) -> None:
        """FSDP2 learners (every rank calls it): rank 0 assembles the full weights, for `publish`,
        `digest`, `layout` and `send_weights` until the next step."""
        self.gathered = dict(self.learner.state_dict())

    def weights(self) -> dict[str, torch.Tensor]:
        """This replica's weights (an FSDP2 learner's: those rank 0 gathered last)."""
        if self.trainer is None or not self.trainer.sharded:
            return self.model.state_dict()
        if self.gathered is None:
            raise RuntimeError("an FSDP2 learner's weights are shards: gather them first")
        return self.gathered

    def reset_optimizer(self) -> None:
        self.learner.reset_optimizer()

    def save(self, directory: str) -> None:
        self.learner.save(Path(directory))

    def export(self, directory: str) -> None:
        self.learner.export(Path(directory))

    def load_optimizer(self, directory: str) -> None:
        self.learner.load_optimizer(Path(directory))

    def publish(self) -> tuple[list[Slot], list[np.ndarray]]:
        """The replica's weights as a weight-sync payload (Ray stores the two return values apart)."""
        return pack(self.weights(), self.cfg.distributed.bucket_mb << 20)

    # broadcast group (distributed.weight_sync=broadcast): learner rank 0 and the rollout workers

    def layout(self) -> list[Slot]:
        """The slots of this replica's weights: the group's metadata, sent to the workers once."""
        return layout(self.weights(), self.cfg.distributed.bucket_mb << 20)

    def join_sync(self, rank: int, world: int, address: str, port: int, interface: str | None,
                  slots: list[Slot]) -> CollectiveFailed | None:
        """Become rank `rank` of a new broadcast group (rank 0, learner rank 0, hosts it)."""
        pin_interface(interface)
        self.sync_group = None  # a previous group's sockets go first
        try:
            self.sync_group = SyncGroup(address, port, rank, world, slots, self.model.device,
                                        self.cfg.distributed.collective_timeout)
        except RuntimeError as err:  # a member never came (c10d's errors are RuntimeErrors)
            return CollectiveFailed(f"could not form the broadcast group: {first_line(err)}")
        return None

    def send_weights(self) -> CollectiveFailed | None:
        """Rank 0: broadcast the replica's weights to the group."""
        slots, buckets = pack(self.weights(), self.cfg.distributed.bucket_mb << 20)
        self.sent = slots, buckets  # kept for a replacement worker, which joins later (`resend`)
        try:
            self.synced.broadcast([torch.from_numpy(bucket).to(self.model.device) for bucket in buckets])
        except RuntimeError as err:
            return CollectiveFailed(f"broadcast failed: {first_line(err)}")
        return None

    def resend(self) -> tuple[list[Slot], list[np.ndarray]]:
        """Rank 0: the weights it broadcast last, as an object-store payload (`publish`)."""
        return self.sent

    def receive_weights(self, version: int) -> str | CollectiveFailed:
        """A worker: receive the broadcast weights and generate with them as `version`; their digest."""
        try:
            buckets = self.synced.broadcast()
        except RuntimeError as err:
            return CollectiveFailed(f"broadcast failed: {first_line(err)}")
        return self.load_weights(version, self.synced.slots, buckets)

    @property
    def synced(self) -> SyncGroup:
        if self.sync_group is None:
            raise RuntimeError("this actor is in no broadcast group")
        return self.sync_group

    # rollout worker

    def load_weights(self, version: int, slots: list[Slot], buckets: list[np.ndarray] | list[torch.Tensor]) -> str:
        """Generate with the published weights from now on, as `version`; returns their digest."""
        self.model.load_state_dict(unpack(slots, buckets))
        self.engine.update_weights(version, {})
        return self.digest()

    def set_version(self, version: int) -> None:
        """Colocated: the engine runs the learner's parameters; only the version changes."""
        self.engine.update_weights(version, {})

    def digest(self) -> str:
        return digest(self.weights())

    def generate(self, requests: list[Request], params: SamplingParams, seed: int) -> GenerateResult:
        """The engine's result, with the seconds it took (for the worker's throughput)."""
        began = time.perf_counter()
        result = self.engine.generate(requests, params, seed)
        if self.model.device.type == "cuda":  # colocated: give the KV cache's memory back before training
            torch.cuda.empty_cache()
        return dataclasses.replace(result, metrics={"seconds": time.perf_counter() - began})
