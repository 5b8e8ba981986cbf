"""The `distributed` section: RL on a Ray cluster (`run.backend=ray`), see `mirrorl.distributed`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mirrorl.config.base import Section


class DistributedConfig(Section):
    """Rollout workers and a learner group as Ray actors (`run.backend=ray`; `pip install mirrorl[ray]`)."""

    rollout_workers: int = Field(2, ge=1, description="Rollout workers, each a Ray actor with its own policy replica.")
    learners: int = Field(2, ge=1, description="Learner ranks: data-parallel training (DDP) under torch.distributed.")
    strategy: Literal["ddp", "fsdp2"] = Field(
        "ddp", description="How the learner ranks share the model: 'ddp': each holds all the weights and optimizer "
        "state (DistributedDataParallel); 'fsdp2': each holds a shard of them (torch's fully_shard), gathered layer "
        "by layer in each forward, for models too large for one device. Needs placement=separate.",
    )
    placement: Literal["separate", "colocated"] = Field(
        "separate", description="'separate': workers and learners are disjoint actors, the weights move through the "
        "Ray object store after each optimize; 'colocated': each learner rank also generates with its own replica "
        "(k1.5's hybrid deployment; needs rollout_workers == learners), so no weights move.",
    )
    max_staleness: int = Field(
        0, ge=0, le=1, description="0: iteration i generates with its own weights pi_i. 1: asynchronous rollouts: "
        "iteration i+1's rollout runs on the workers while the learners optimize iteration i, so its tokens are one "
        "version old when they train (weighted as partial rollouts' older segments are, rl.off_policy_correction). "
        "Checkpoint iterations stay synchronous, so resume stays exact. Deeper pipelines gain nothing: a rollout "
        "step continues the trajectories of the one before. Needs placement=separate.",
    )
    reward_workers: int = Field(
        0, ge=0, description="Score rewards in a pool of this many Ray actors (on any machine of the cluster, each "
        "building the reward there); 0 scores in the driver.",
    )
    cpus_per_actor: float = Field(
        0.5, gt=0, description="Ray CPU request of each actor (fractional requests let several share a core).",
    )
    gpus_per_actor: float = Field(0.0, ge=0, description="Ray GPU request of each actor; 1 on a GPU cluster.")
    threads_per_actor: int = Field(1, ge=1, description="torch CPU threads inside each actor.")
    network_interface: str | None = Field(
        None, description="Network interface torch.distributed (gloo) binds to, e.g. 'eth0'; None: 'lo' on a Ray "
        "instance the run starts itself (one machine), gloo's own choice on a cluster (run.ray_address).",
    )
    weight_sync: Literal["object_store", "broadcast"] = Field(
        "object_store", description="How a new version reaches separate rollout workers: 'object_store': rank 0 puts "
        "it in Ray's object store and each worker reads it (shared memory on one machine); 'broadcast': rank 0 "
        "broadcasts it to a torch.distributed group of its own with the workers (NCCL between GPUs: the weights "
        "stay on the devices; gloo on CPU).",
    )
    bucket_mb: int = Field(256, ge=1, description="Weight sync: parameters are packed into buffers of this size.")
    verify_sync: bool = Field(
        True, description="After each weight sync, compare every worker's weight digest with the learners' "
        "(hashes all weights on each side: for a large model, seconds per sync).",
    )
    call_timeout: float = Field(
        600.0, gt=0, description="Seconds a Ray call (a generate, an optimize, a weight load) may take before its "
        "actor counts as hung: a rollout worker is replaced and its requests re-queued, a learner ends the run.",
    )
    collective_timeout: float = Field(
        60.0, gt=0, description="Seconds a torch.distributed collective may wait for the other ranks.",
    )
    max_restarts: int = Field(
        3, ge=0, description="Replacements of failed rollout workers allowed per run before it stops.",
    )

    @model_validator(mode="after")
    def _colocated_pairs(self) -> DistributedConfig:
        if self.placement == "colocated" and self.rollout_workers != self.learners:
            raise ValueError(f"placement=colocated runs one engine per learner rank: set rollout_workers "
                             f"({self.rollout_workers}) equal to learners ({self.learners})")
        if self.placement == "colocated" and self.strategy == "fsdp2":
            raise ValueError("strategy=fsdp2 shards the learners' weights, which colocated engines cannot generate "
                             "with: use placement=separate")
        if self.placement == "colocated" and self.weight_sync == "broadcast":
            raise ValueError("weight_sync=broadcast moves weights to separate rollout workers; colocated ones already "
                             "hold them: use placement=separate or weight_sync=object_store")
        if self.placement == "colocated" and self.max_staleness:
            raise ValueError("max_staleness=1 overlaps rollout and training, which colocated actors cannot: "
                             "use placement=separate")
        return self
