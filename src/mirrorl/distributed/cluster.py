"""The driver's side of a Ray run: the actors, the learner group and the rollout workers.

Every Ray call is bounded by `distributed.call_timeout`, every collective by
`distributed.collective_timeout`, so nothing waits forever:
  - a learner rank that dies or hangs ends the run with a `BackendError` naming it, as soon as the
    driver sees it (the other ranks are killed with the rest); checkpoints already written stay;
  - a rollout worker that dies or hangs is killed, replaced by a new actor that loads the current
    weights, and its share of the call is re-run with the same seed: every request is answered
    exactly once, as the dead worker would have answered it. At most `distributed.max_restarts`
    replacements per run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError
from torch import Tensor

from mirrorl.config import Config
from mirrorl.distributed import BackendError
from mirrorl.distributed.actor import PolicyActor
from mirrorl.distributed.sync import CollectiveFailed
from mirrorl.distributed.weights import Slot, pack, unpack
from mirrorl.rewards.batch import BatchFirst
from mirrorl.train.metrics import console
from mirrorl.train.trainer import combine
from mirrorl.types import GenerateResult, Request, SamplingParams, StepMetrics, TrainBatch

Actor = Any  # a Ray actor handle of PolicyActor


@dataclass
class Failure:
    why: str  # "died (...)", "gave no answer within N s"


def gather(refs: Sequence[ray.ObjectRef], timeout: float, stop: Callable[[int, Failure], None] | None = None
           ) -> list[Any]:
    """The results of `refs` in order, as they come; a call whose actor died, or that has not
    answered `timeout` seconds from now, gives a `Failure` (or `stop(index, failure)` at once).
    An exception raised inside a call (a bug, bad input) propagates as it is."""
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending, deadline = list(refs), time.monotonic() + timeout
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        for ref in ready:
            try:
                results[index[ref]] = ray.get(ref)
            except RayActorError as err:
                failure = Failure(f"died ({_first_line(err)})")
                if stop is not None:
                    stop(index[ref], failure)
                results[index[ref]] = failure
    for ref in pending:
        failure = Failure(f"gave no answer within {timeout:.0f} s")
        if stop is not None:
            stop(index[ref], failure)
        results[index[ref]] = failure
    return results


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


class PublishedWeights(Mapping[str, Tensor]):
    """One weight version the learners published: its slot list and digest here, and its buffers
    either in the object store behind `buckets`, which workers resolve themselves (the driver never
    copies them), or, when `buckets` is None, still on learner rank 0 (`source`), which broadcasts
    them to the workers (`distributed.weight_sync=broadcast`). A Mapping for any other generator."""

    def __init__(self, slots: list[Slot], buckets: ray.ObjectRef | None, digest: str | None,
                 source: Actor | None = None) -> None:
        self.slots, self.buckets, self.digest, self.source = slots, buckets, digest, source
        self.nbytes = sum(slot.nbytes for slot in slots)
        self._state: dict[str, Tensor] | None = None

    @classmethod
    def put(cls, state: Mapping[str, Tensor], bucket_bytes: int) -> PublishedWeights:
        slots, buckets = pack(state, bucket_bytes)
        return cls(slots, ray.put(buckets), None)

    def _materialized(self) -> dict[str, Tensor]:
        if self._state is None:
            buckets = self.buckets
            if buckets is None:
                buckets = self.source.publish.options(num_returns=2).remote()[1]
            self._state = unpack(self.slots, ray.get(buckets))
        return self._state

    def __getitem__(self, name: str) -> Tensor:
        return self._materialized()[name]

    def __iter__(self) -> Iterator[str]:
        return (slot.name for slot in self.slots)

    def __len__(self) -> int:
        return len(self.slots)


class LearnerGroup:
    """The `mirrorl.types.Trainer` of M learner ranks, each a Ray actor, training with DDP."""

    def __init__(self, actors: list[Actor], cfg: Config) -> None:
        self.actors, self.timeout, self.verify = actors, cfg.distributed.call_timeout, cfg.distributed.verify_sync
        self.broadcast = cfg.distributed.weight_sync == "broadcast"
        # FSDP2: the weights are shards; rank 0 gathers them with the others' help (a collective) to publish or save
        self.sharded = cfg.distributed.strategy == "fsdp2" and len(actors) > 1
        self.writers = None if self.sharded else 1  # the ranks that take part in save and export
        self.layout: list[Slot] | None = None  # of the weights (broadcast: fetched once)

    def _all(self, method: str, *args: Any, ranks: int | None = None) -> list[Any]:
        """`method(*args)` on every rank (or the first `ranks`); a rank that fails ends the run at once."""
        def fail(rank: int, failure: Failure) -> None:
            raise BackendError(f"learner rank {rank} of {len(self.actors)} {failure.why} during {method}")

        actors = self.actors[:ranks]
        return gather([getattr(actor, method).remote(*args) for actor in actors], self.timeout, fail)

    def join(self, interface: str | None) -> None:
        """Form the torch.distributed group (rank 0's machine holds the rendezvous)."""
        [(address, port)] = self._all("rendezvous", ranks=1)
        calls = [actor.join.remote(rank, len(self.actors), address, port, interface)
                 for rank, actor in enumerate(self.actors)]
        gather(calls, self.timeout, lambda rank, f: _raise(f"learner rank {rank} {f.why} while joining the group"))

    def train_step(self, batch: TrainBatch, lr: float) -> StepMetrics:
        return combine(self._all("train_share", ray.put(batch), lr))

    def reset_optimizer(self) -> None:
        self._all("reset_optimizer")

    def state_dict(self) -> PublishedWeights:
        """Rank 0 publishes its weights (all ranks hold the same after a DDP step): into the object
        store, or, to be broadcast, only their digest (the layout once)."""
        if self.sharded:
            self._all("gather")
        digest = self._all("digest", ranks=1)[0] if self.verify else None
        if self.broadcast:
            if self.layout is None:
                [self.layout] = self._all("layout", ranks=1)
            return PublishedWeights(self.layout, None, digest, source=self.actors[0])
        slots, buckets = self.actors[0].publish.options(num_returns=2).remote()
        [slot_list] = gather([slots], self.timeout, lambda _, f: _raise(f"learner rank 0 {f.why} during publish"))
        return PublishedWeights(slot_list, buckets, digest)

    def digests(self) -> list[str]:
        """Every rank's weight digest (FSDP2: rank 0's of the weights it gathered last, the others' of {})."""
        return self._all("digest")

    def save(self, directory: Path) -> None:
        """Rank 0 writes the checkpoint, FSDP2 ranks their optimizer shards too (on a cluster,
        `run.output_dir` must be shared storage)."""
        self._all("save", str(directory), ranks=self.writers)

    def export(self, directory: Path) -> None:
        self._all("export", str(directory), ranks=self.writers)

    def load_optimizer(self, directory: Path) -> None:
        self._all("load_optimizer", str(directory))


def _raise(message: str) -> None:
    raise BackendError(message)


def _shard_seed(seed: int, shard: int) -> int:
    return (seed * 1_000_003 + shard) % (1 << 63)


class RolloutWorkers:
    """The `mirrorl.types.Generator` of N rollout workers, each a Ray actor with its own engine.

    `spawn` makes a replacement worker; None when the workers are the learner ranks themselves
    (colocated), where the engines already run the trained parameters and a dead one is a dead learner.
    """

    def __init__(self, actors: list[Actor], spawn: Callable[[], Actor] | None, cfg: Config) -> None:
        self.actors, self.spawn = list(actors), spawn
        self.timeout, self.restarts_left = cfg.distributed.call_timeout, cfg.distributed.max_restarts
        self.bucket_bytes, self.interface = cfg.distributed.bucket_mb << 20, cfg.distributed.network_interface
        self.version, self.weights = 0, None
        self.grouped = False  # in a broadcast group with learner rank 0 (formed again after a replacement)
        self.sync: dict[str, float] = {}  # the last sync's figures, reported with the next generate

    def update_weights(self, version: int, state: Mapping[str, Tensor]) -> None:
        """Every worker loads `state` as `version` and its digest is checked against the learners'."""
        self.version = version
        if self.spawn is None:  # colocated
            self._each(lambda w: self.actors[w].set_version.remote(version), "set the weight version")
            return
        weights = state if isinstance(state, PublishedWeights) else PublishedWeights.put(state, self.bucket_bytes)
        began = time.perf_counter()
        if weights.buckets is None:
            digests = self._broadcast(weights)
        else:
            self.weights = weights
            digests = self._each(lambda w: self._load(self.actors[w]), "load weights")
        self.sync = {"sync_bytes": float(weights.nbytes * len(self.actors)),
                     "time_weight_load": time.perf_counter() - began}
        expected = weights.digest
        wrong = [index for index, found in enumerate(digests) if expected is not None and found != expected]
        if wrong:
            raise BackendError(f"weight sync of version {version}: rollout worker {wrong[0]} holds other weights "
                               f"than the learners (digest {digests[wrong[0]]} != {expected})")

    def _load(self, actor: Actor) -> ray.ObjectRef:
        """`actor` loads the current weights from the object store (a broadcast version is fetched
        from learner rank 0 first: a replacement worker joins the group only at the next version)."""
        assert self.weights is not None
        if self.weights.buckets is None:
            _, buckets = self.weights.source.resend.options(num_returns=2).remote()
            self.weights = PublishedWeights(self.weights.slots, buckets, self.weights.digest)
        return actor.load_weights.remote(self.version, self.weights.slots, self.weights.buckets)

    def _broadcast(self, weights: PublishedWeights) -> list[str]:
        """Learner rank 0 broadcasts `weights` to the workers (forming the group first, and again
        after a worker was replaced, then sending again); the workers' digests. A worker that died
        since the last call is found (and replaced) first: a collective would wait for it until
        `collective_timeout`."""
        self._each(lambda w: self.actors[w].pid.remote(), "answer")
        while True:
            if not self.grouped:
                self.grouped = self._form_group(weights.source, weights.slots)
            if self.grouped:
                received = self._on_group(weights.source, "receive weights", lambda rank, member: (
                    member.receive_weights.remote(self.version) if rank else member.send_weights.remote()))
                if received is not None:
                    self.weights = weights
                    return received[1:]

    def _form_group(self, source: Actor, slots: list[Slot]) -> bool:
        """Learner rank 0 (`source`) and every worker form a new broadcast group; False if a worker failed."""
        [(address, port)] = gather([source.rendezvous.remote()], self.timeout,
                                   lambda _, f: _raise(f"learner rank 0 {f.why} during rendezvous"))
        world = len(self.actors) + 1
        return self._on_group(source, "form the broadcast group", lambda rank, member: member.join_sync.remote(
            rank, world, address, port, self.interface, slots)) is not None

    def _on_group(self, source: Actor, what: str, call: Callable[[int, Actor], ray.ObjectRef]) -> list[Any] | None:
        """`call(rank, member)` on every member of the broadcast group (rank 0: `source`). None when
        workers died or hung (they are replaced: form the group again); a failed collective with no
        dead member, or a failed learner rank 0, stops the run."""
        def stop(rank: int, failure: Failure) -> None:  # a dead rank 0 ends the run at once
            if rank == 0:
                raise BackendError(f"learner rank 0 {failure.why} while asked to {what}")

        outcomes = gather([call(rank, member) for rank, member in enumerate([source, *self.actors])], self.timeout,
                          stop)
        dead = [w for w, outcome in enumerate(outcomes[1:]) if isinstance(outcome, Failure)]
        for w in dead:
            self._replace(w, outcomes[w + 1].why, what, load=False)
        broken = [outcome for outcome in outcomes if isinstance(outcome, CollectiveFailed)]
        if broken and not dead:
            raise BackendError(f"weight broadcast of version {self.version}: {broken[0].why}")
        return None if dead else outcomes

    def _each(self, call: Callable[[int], ray.ObjectRef], what: str) -> list[Any]:
        """`call(w)` for every worker w (see `_collect`)."""
        return self._collect([call(w) for w in range(len(self.actors))], call, what)

    def _collect(self, refs: list[ray.ObjectRef], call: Callable[[int], ray.ObjectRef], what: str) -> list[Any]:
        """The results of worker w's call `refs[w]`; a failed worker is replaced (loading the current
        weights) and `call(w)` made again on the replacement, with the same arguments."""
        todo, results = list(range(len(refs))), [None] * len(refs)
        while todo:
            outcomes = gather(refs, self.timeout)
            for index, outcome in zip(todo, outcomes):
                results[index] = outcome
            todo = [index for index, outcome in zip(todo, outcomes) if isinstance(outcome, Failure)]
            for index in todo:
                self._replace(index, results[index].why, what)
            refs = [call(index) for index in todo]
        return results

    def _replace(self, index: int, why: str, what: str, load: bool = True) -> None:
        """Worker `index` is killed and a new actor takes its place; it loads the current weights
        unless `load` is False (it is about to receive them in a broadcast)."""
        if self.spawn is None:
            # colocated: the worker is a learner rank, and a static DDP group takes no replacement
            raise BackendError(f"learner rank {index} of {len(self.actors)} {why} during {what}")
        if self.restarts_left == 0:
            raise BackendError(f"rollout worker {index} {why} while asked to {what}, and no replacement is left "
                               "(distributed.max_restarts)")
        self.restarts_left -= 1
        ray.kill(self.actors[index], no_restart=True)
        new = self.actors[index] = self.spawn()
        self.grouped = False
        [ready] = gather([new.ready.remote()], self.timeout)  # awaited: a broadcast group would not wait for it
        if ready is not None:
            why = ready.why if isinstance(ready, Failure) else f"could not load the policy: {ready}"
            raise BackendError(f"the replacement of rollout worker {index} {why}")
        if load and self.weights is not None:
            [digest] = gather([self._load(new)], self.timeout)
            if isinstance(digest, Failure):
                raise BackendError(f"the replacement of rollout worker {index} {digest.why} while loading weights")
        console.print(f"rollout worker {index} {why} while asked to {what}: replaced, and the call made again")

    def generate(self, requests: Sequence[Request], params: SamplingParams, seed: int) -> GenerateResult:
        return self.submit(requests, params, seed).result()

    def submit(self, requests: Sequence[Request], params: SamplingParams, seed: int) -> PendingRollout:
        """Start the call: requests sorted by length and dealt round-robin, so each worker gets as many
        of each length; worker w's share is seeded by (seed, w), whichever actor runs it."""
        order = sorted(range(len(requests)), key=lambda j: len(requests[j].prompt_ids) + len(requests[j].prefix_ids))
        shares = [order[w :: len(self.actors)] for w in range(len(self.actors))]

        def call(w: int) -> ray.ObjectRef:
            return self.actors[w].generate.remote([requests[j] for j in shares[w]], params, _shard_seed(seed, w))

        return PendingRollout(self, shares, call, [call(w) for w in range(len(self.actors))], self.version)


@dataclass
class PendingRollout:
    """A `RolloutWorkers` call under way (`mirrorl.types.PendingGenerate`)."""

    workers: RolloutWorkers
    shares: list[list[int]]  # request indices of each worker
    call: Callable[[int], ray.ObjectRef]  # worker w's call, made again on a replacement
    refs: list[ray.ObjectRef]
    version: int  # of the weights the workers held when it started

    def result(self) -> GenerateResult:
        """The completions in request order. Each worker must still hold `version`: weights are
        published only after a pending call is collected, so a replacement loads the same version."""
        results = self.workers._collect(self.refs, self.call, "generate")
        completions: list[Any] = [None] * sum(len(share) for share in self.shares)
        for share, result in zip(self.shares, results):
            if result.weight_version != self.version:
                raise BackendError(f"a rollout worker generated with weight version {result.weight_version}, "
                                   f"expected {self.version}")
            for j, completion in zip(share, result.completions, strict=True):
                completions[j] = completion
        metrics = dict(self.workers.sync)
        for w, result in enumerate(results):
            metrics[f"worker{w}_tokens_per_second"] = result.new_tokens / max(1e-9, result.metrics["seconds"])
            metrics[f"worker{w}_idle_fraction"] = result.idle_fraction
        self.workers.sync = {}
        return GenerateResult(completions, self.version, new_tokens=sum(r.new_tokens for r in results),
                              idle_fraction=sum(r.idle_fraction for r in results) / len(results), metrics=metrics)


@dataclass
class RayRun:
    trainer: LearnerGroup
    generator: RolloutWorkers
    reward: BatchFirst | None  # the reward pool; None when rewards are scored in the driver


@contextmanager
def ray_cluster(cfg: Config, policy: str) -> Iterator[RayRun]:
    """Start the actors of `cfg.distributed` with the policy at `policy`; kill them on the way out.

    Connects to `run.ray_address` or starts a Ray instance on this machine (and stops it after);
    a Ray instance already initialised in this process (tests) is used as it is.
    """
    settings = cfg.distributed
    started = not ray.is_initialized()
    if started:
        ray.init(address=cfg.run.ray_address, include_dashboard=False, configure_logging=False)
    interface = settings.network_interface or ("lo" if cfg.run.ray_address is None else None)
    config = cfg.model_copy(update={"distributed": settings.model_copy(update={"network_interface": interface})})
    # SPREAD: replicas over as many machines as have room, rather than packed onto the first
    remote = ray.remote(PolicyActor).options(num_cpus=settings.cpus_per_actor, num_gpus=settings.gpus_per_actor,
                                             max_restarts=0, max_task_retries=0, scheduling_strategy="SPREAD")
    payload = config.model_dump(mode="json")
    spawn = lambda: remote.remote(payload, policy)
    learners = [spawn() for _ in range(settings.learners)]
    colocated = settings.placement == "colocated"
    workers = learners if colocated else [spawn() for _ in range(settings.rollout_workers)]
    generator = RolloutWorkers(workers, None if colocated else spawn, config)
    pool = None

    def everyone() -> list[Actor]:  # each actor once (colocated workers are the learners); workers may be replaced
        return learners + ([] if colocated else generator.actors)

    try:
        if settings.reward_workers:
            from mirrorl.distributed.rewards import RewardPool

            pool = RewardPool(config)
        for outcome in gather([actor.ready.remote() for actor in everyone()], settings.call_timeout):
            if isinstance(outcome, Failure):
                raise BackendError(f"a Ray actor {outcome.why} while loading the policy")
            if outcome is not None:
                raise ValueError(f"on a Ray actor: {outcome}")
        group = LearnerGroup(learners, config)
        group.join(interface)
        nodes = gather([actor.node.remote() for actor in everyone()], settings.call_timeout)
        console.print(f"ray: {len(learners)} learner ranks and {len(generator.actors)} rollout workers "
                      f"({settings.placement}) on {len(set(nodes))} node(s)")
        yield RayRun(group, generator, pool)
    finally:
        for actor in everyone() + (pool.actors if pool else []):
            ray.kill(actor, no_restart=True)
        if started:
            ray.shutdown()
