"""RL across processes and machines on Ray and torch.distributed (`run.backend=ray`).

k1.5 (sec. 2.6) runs training and inference as separate workers and moves the weights between
them every iteration. Here the driver runs the same `train_rl` loop as a single process: sampling,
partial rollouts and the replay buffer, rewards, logging and checkpoints stay in the driver; only
the two seams change (`mirrorl.types`):
  - the generator is `RolloutWorkers`: N Ray actors, each an engine over its own policy replica;
    a call's requests are spread over them by length, and a worker that dies or hangs is replaced
    and its requests re-run (each request is answered exactly once);
  - the trainer is `LearnerGroup`: M Ray actors forming a torch.distributed group (gloo on CPU,
    NCCL on CUDA) that trains with DistributedDataParallel or FSDP2; rank 0 writes checkpoints.
After each optimize the learners publish the new version as a few byte buffers
(`mirrorl.distributed.weights`), through Ray's object store or a broadcast group of rank 0 and the
workers (`mirrorl.distributed.sync`); every worker loads it before generating and reports the
version it generated with, and its weights' digest is checked against the learners'.

Modules: `weights` (packing and digests), `sync` (the broadcast group), `actor` (what runs in one
actor), `cluster` (the driver side: starting actors, the two seams, timeouts and replacement). Ray
is an optional dependency, imported only here and only when the backend is used.
"""


class BackendError(RuntimeError):
    """A distributed run cannot go on (a learner rank died or hung, workers failed too often); the
    message says which and why. Checkpoints already written are intact."""
