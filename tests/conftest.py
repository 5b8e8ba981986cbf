"""Shared fixtures: a tiny policy built locally (no download), fresh or saved in Hugging Face format."""

import os
import sys
from pathlib import Path

import pytest

# Many tests start fresh Python processes (the CLI in a subprocess, Ray actors) that import torch and
# transformers. Where the environment forbids writing bytecode (PYTHONDONTWRITEBYTECODE, set on our CI
# machines) each of them compiles those packages from source again, ~15 s apiece on 2 cores. Let this
# run write the cache once; nothing the tests check depends on it.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

from mirrorl.config import ModelConfig  # noqa: E402
from mirrorl.models import build_tiny, save_policy  # noqa: E402

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
