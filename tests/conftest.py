"""Shared fixtures: a tiny policy built locally (no download), fresh or saved in Hugging Face format."""

from pathlib import Path

import pytest

from mirrorl.config import ModelConfig
from mirrorl.models import build_tiny, save_policy

SMALL = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_positions=128)


@pytest.fixture
def tiny_model():
    """A fresh, untrained tiny Llama-style policy (one layer, hidden size 32) and its character tokenizer."""
    return build_tiny(SMALL, seed=0)


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory) -> Path:
    """The same untrained policy saved with `save_pretrained`: RL can start from it without an SFT phase."""
    path = tmp_path_factory.mktemp("tiny_policy")
    save_policy(*build_tiny(SMALL, seed=0), path)
    return path
