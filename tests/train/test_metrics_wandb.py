"""W&B plumbing against a stand-in module (W&B is an optional extra, not installed for the tests)."""

import json
import sys
import types
from pathlib import Path

from mirrorl.train.metrics import MetricsLogger


class FakeRun:
    def __init__(self, run_id: str) -> None:
        self.id, self.logged, self.axes = run_id, [], {}

    def define_metric(self, name: str, step_metric: str | None = None) -> None:
        self.axes[name] = step_metric

    def log(self, data: dict, **kwargs) -> None:
        assert not kwargs  # no global step: each phase has its own axis
        self.logged.append(data)


def fake_wandb(monkeypatch) -> types.SimpleNamespace:
    module = types.SimpleNamespace(run=None, inits=[])

    def init(**kwargs):
        module.inits.append(kwargs)
        module.run = FakeRun(kwargs["id"] or f"run{len(module.inits)}")
        return module.run

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def test_phases_log_on_their_own_axes_and_a_resumed_phase_continues_its_wandb_run(tmp_path: Path, monkeypatch):
    wandb = fake_wandb(monkeypatch)
    sft = MetricsLogger(tmp_path, "sft", tensorboard=False, wandb=True)
    for step in range(3):
        sft.log(step, {"loss": 1.0})
    rl = MetricsLogger(tmp_path, "rl", tensorboard=False, wandb=True)  # same process: same W&B run
    rl.log(0, {"reward": 0.5})
    run = wandb.run
    assert len(wandb.inits) == 1 and wandb.inits[0]["id"] is None
    assert run.axes == {"sft/step": None, "sft/*": "sft/step", "rl/step": None, "rl/*": "rl/step"}
    assert run.logged[-1] == {"rl/step": 0, "rl/reward": 0.5}  # step 0 after SFT's step 2: kept on its own axis
    assert json.loads((tmp_path / "wandb_run_ids.json").read_text()) == {"sft": "run1", "rl": "run1"}

    wandb.run = None  # a new process resumes the RL phase: it continues the same W&B run
    MetricsLogger(tmp_path, "rl", tensorboard=False, wandb=True, resume_step=1)
    assert wandb.inits[-1]["id"] == "run1" and wandb.inits[-1]["resume"] == "allow"
    wandb.run = None  # a phase started afresh in a new process gets a new W&B run
    MetricsLogger(tmp_path, "sft", tensorboard=False, wandb=True)
    assert wandb.inits[-1]["id"] is None and wandb.inits[-1]["resume"] is None
