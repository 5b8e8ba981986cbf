"""Training state inside a checkpoint: RNG state and trainer/optimizer/scheduler state round trips."""

import random

import numpy as np
import pytest
import torch

from mirrorl.train.checkpoint import CheckpointStore
from mirrorl.train.state import capture_rng, read_training_state, restore_rng, write_training_state


def _draws(gen: random.Random, np_gen: np.random.Generator, torch_gen: torch.Generator) -> list:
    return [random.random(), np.random.rand(), torch.rand(1).item(), torch.randn(2).tolist(),
            gen.random(), np_gen.random(), torch.rand(1, generator=torch_gen).item()]


def test_rng_state_roundtrip_through_a_checkpoint_reproduces_the_draws(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    sampler, np_gen, torch_gen = random.Random(4), np.random.default_rng(5), torch.Generator().manual_seed(6)
    _draws(sampler, np_gen, torch_gen)  # move every generator off its seed
    state = capture_rng(sampler=sampler, numbers=np_gen, noise=torch_gen)
    first = _draws(sampler, np_gen, torch_gen)
    assert _draws(sampler, np_gen, torch_gen) != first  # the draws do change without a restore
    store = CheckpointStore(tmp_path / "checkpoints")
    store.save(1, lambda path: write_training_state(path, {"iteration": 1}, rng=state))
    loaded = read_training_state(store.latest().path)
    restore_rng(loaded.rng, sampler=sampler, numbers=np_gen, noise=torch_gen)
    assert _draws(sampler, np_gen, torch_gen) == first
    with pytest.raises(ValueError, match="other"):
        restore_rng(loaded.rng, other=random.Random())


def test_trainer_optimizer_and_scheduler_state_roundtrip(tmp_path):
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))
    for _ in range(3):
        layer(torch.randn(4, 3)).square().sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    store = CheckpointStore(tmp_path / "checkpoints")
    trainer = {"iteration": 3, "best_accuracy": 0.25, "history": [1, 2]}
    store.save(3, lambda path: write_training_state(path, trainer, optimizer, scheduler))

    fresh = torch.optim.AdamW(layer.parameters(), lr=0.1)
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh, lambda step: 1 / (step + 1))
    loaded = read_training_state(store.latest().path, fresh, fresh_scheduler)
    assert loaded.trainer == trainer and loaded.rng is None
    assert fresh_scheduler.last_epoch == 3 and fresh.param_groups[0]["lr"] == pytest.approx(0.1 / 4)
    for param in layer.parameters():
        saved, restored = optimizer.state[param], fresh.state[param]
        assert torch.equal(saved["exp_avg"], restored["exp_avg"]) and torch.equal(saved["step"], restored["step"])
