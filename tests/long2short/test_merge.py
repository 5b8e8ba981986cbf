"""Weight merging (k1.5 sec. 2.4): every merged tensor is the weighted average of the inputs' tensors, checked
element by element against the average computed in float64; the output loads with `from_pretrained`; sharded
output and input; and each refusal names what differs."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformers import AutoModelForCausalLM, AutoTokenizer

from mirrorl.config import ModelConfig
from mirrorl.long2short.merge import INDEX_FILE, SINGLE_FILE, merge_checkpoints, merge_sweep
from mirrorl.models import build_tiny, save_policy

SPEC = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=64)
TOLERANCE = 1e-7  # float32 accumulation: weights are ~0.02 (init std) and norms 1.0, an ulp is <= 1.2e-7 at 1.0


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[Path]:
    """Three tiny Llama checkpoints of the same shape and tokenizer, from different seeds."""
    root = tmp_path_factory.mktemp("merge_inputs")
    for seed in (1, 2, 3):
        save_policy(*build_tiny(SPEC, seed=seed), root / f"seed{seed}")
    return [root / f"seed{seed}" for seed in (1, 2, 3)]


def weights_of(path: Path) -> dict[str, Tensor]:
    """Every tensor of a model directory, sharded or not."""
    if (path / INDEX_FILE).is_file():
        files = set(json.loads((path / INDEX_FILE).read_text())["weight_map"].values())
        return {name: t for file in sorted(files) for name, t in load_file(path / file).items()}
    return load_file(path / SINGLE_FILE)


def expected_average(paths: list[Path], weights: list[float]) -> dict[str, Tensor]:
    """sum_i w_i * t_i computed in float64, the reference the float32 merge is held to."""
    states = [weights_of(path) for path in paths]
    return {name: sum(w * state[name].double() for w, state in zip(weights, states)) for name in states[0]}


def assert_average(out: Path, paths: list[Path], weights: list[float]) -> None:
    merged, expected = weights_of(out), expected_average(paths, weights)
    assert merged.keys() == expected.keys()
    for name, tensor in merged.items():
        assert tensor.dtype == torch.float32, name
        error = (tensor.double() - expected[name]).abs().max().item()
        assert error <= TOLERANCE, f"{name}: max |merged - expected| = {error:.3g}"


def test_two_models_are_averaged_element_by_element(models, tmp_path):
    result = merge_checkpoints(models[:2], (0.3, 0.7), tmp_path / "merged")
    assert_average(tmp_path / "merged", models[:2], [0.3, 0.7])
    inputs = weights_of(models[0])
    assert (result.num_tensors, result.num_parameters) == (len(inputs), sum(t.numel() for t in inputs.values()))
    assert result.bytes_written == (tmp_path / "merged" / SINGLE_FILE).stat().st_size
    # 0.3 * a + 0.7 * b is neither input: a merge that copied one would pass the dtype checks above
    merged = weights_of(tmp_path / "merged")["model.embed_tokens.weight"]
    assert not torch.equal(merged, inputs["model.embed_tokens.weight"])


def test_three_models(models, tmp_path):
    merge_checkpoints(models, (0.2, 0.5, 0.3), tmp_path / "merged")
    assert_average(tmp_path / "merged", models, [0.2, 0.5, 0.3])


def test_output_loads_and_computes_the_average_models_logits(models, tmp_path):
    merge_checkpoints(models[:2], (0.3, 0.7), tmp_path / "merged")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    reference, tokenizer = build_tiny(SPEC, seed=0)
    expected = {name: t.float() for name, t in expected_average(models[:2], [0.3, 0.7]).items()}
    missing, unexpected = reference.load_state_dict(expected, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected  # lm_head is tied to the embedding
    ids = torch.tensor([tokenizer.encode("2 + 3 = 5")])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, reference.eval()(ids).logits, atol=1e-5, rtol=0)
    assert AutoTokenizer.from_pretrained(tmp_path / "merged").encode("2 + 3 = 5") == tokenizer.encode("2 + 3 = 5")


def test_sharded_output_and_sharded_input(models, tmp_path):
    result = merge_checkpoints(models[:2], (0.3, 0.7), tmp_path / "sharded", shard_mb=0.01)
    out = tmp_path / "sharded"
    index = json.loads((out / INDEX_FILE).read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (out / SINGLE_FILE).exists()
    assert set(index["weight_map"].values()) == {file.name for file in shards}
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in weights_of(out).values())
    for file in shards:  # 10 kB each, unless one tensor alone is larger
        sizes = [t.numel() * t.element_size() for t in load_file(file).values()]
        assert sum(sizes) <= 10_000 or len(sizes) == 1
    assert result.bytes_written == sum(file.stat().st_size for file in shards)
    assert_average(out, models[:2], [0.3, 0.7])
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(loaded.model.embed_tokens.weight, weights_of(out)["model.embed_tokens.weight"])
    # a sharded checkpoint is also a valid input: 0.5 * (0.3 a + 0.7 b) + 0.5 c
    merge_checkpoints([out, models[2]], (0.5, 0.5), tmp_path / "again")
    assert_average(tmp_path / "again", [out, models[2]], [0.5, 0.5])


def test_sweep_writes_one_directory_per_weight(models, tmp_path):
    results = merge_sweep(models[:2], [0.5, 0.75], tmp_path / "sweep")
    assert [r.out.name for r in results] == ["alpha_0.5", "alpha_0.75"]
    assert_average(tmp_path / "sweep" / "alpha_0.75", models[:2], [0.75, 0.25])


def test_integer_tensors_are_copied_when_equal_and_refused_when_not(models, tmp_path):
    copies = []
    for i, (path, step) in enumerate([(models[0], 7), (models[1], 7), (models[1], 8)]):
        copies.append(Path(shutil.copytree(path, tmp_path / f"copy{i}")))
        save_file({**load_file(path / SINGLE_FILE), "step": torch.tensor([step])}, copies[-1] / SINGLE_FILE)
    merge_checkpoints(copies[:2], (0.5, 0.5), tmp_path / "merged")
    assert torch.equal(weights_of(tmp_path / "merged")["step"], torch.tensor([7]))
    with pytest.raises(ValueError, match="torch.int64 tensor step differs"):
        merge_checkpoints([copies[0], copies[2]], (0.5, 0.5), tmp_path / "refused")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy0", "copy1", "copy2", "merged"]  # no partial output


def test_refuses_a_different_shape_naming_the_tensor(models, tmp_path):
    save_policy(*build_tiny(SPEC.model_copy(update={"hidden_size": 48}), seed=1), tmp_path / "wide")
    shapes = r"tensor model\.embed_tokens\.weight has shape \[101, 32\] F32 vs \[101, 48\] F32"
    with pytest.raises(ValueError, match=shapes):
        merge_checkpoints([models[0], tmp_path / "wide"], (0.5, 0.5), tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_refuses_a_different_tokenizer(models, tmp_path):
    model, tokenizer = build_tiny(SPEC, seed=1)
    tokenizer.add_tokens(["<think>"])  # same model shape: only the tokenizers tell them apart
    save_policy(model, tokenizer, tmp_path / "other_tokenizer")
    with pytest.raises(ValueError, match=r"tokenizers' vocabularies differ \(101 vs 102 tokens; e.g. '<think>'\)"):
        merge_checkpoints([models[0], tmp_path / "other_tokenizer"], (0.5, 0.5), tmp_path / "merged")


def test_refuses_a_different_architecture(models, tmp_path):
    other = Path(shutil.copytree(models[1], tmp_path / "other"))
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    with pytest.raises(ValueError, match="config.json model_type differs \\(llama vs mistral\\)"):
        merge_checkpoints([models[0], other], (0.5, 0.5), tmp_path / "merged")


@pytest.mark.parametrize(("weights", "message"), [
    ((0.3, 0.6), r"weights \[0.3, 0.6\] sum to 0.9: a weighted average needs weights that sum to 1"),
    ((0.5, 0.5, 0.0), "3 weights for 2 checkpoints"),
    ((float("nan"), 1.0), "must be finite"),
])
def test_refuses_bad_weights(models, tmp_path, weights, message):
    with pytest.raises(ValueError, match=message):
        merge_checkpoints(models[:2], weights, tmp_path / "merged")


def test_refuses_missing_and_non_model_directories(models, tmp_path):
    with pytest.raises(ValueError, match="at least 2 checkpoints, got 1"):
        merge_checkpoints(models[:1], (1.0,), tmp_path / "merged")
    with pytest.raises(ValueError, match="missing: not a directory"):
        merge_checkpoints([models[0], tmp_path / "missing"], (0.5, 0.5), tmp_path / "merged")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no config.json"):
        merge_checkpoints([models[0], tmp_path / "empty"], (0.5, 0.5), tmp_path / "merged")
    shutil.copy(models[0] / "config.json", tmp_path / "empty")
    with pytest.raises(ValueError, match="empty: no model.safetensors or model.safetensors.index.json"):
        merge_checkpoints([models[0], tmp_path / "empty"], (0.5, 0.5), tmp_path / "merged")


def test_refuses_an_existing_output_unless_overwrite(models, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    merge_checkpoints(models[:2], (0.5, 0.5), out)  # an empty directory is fine
    with pytest.raises(ValueError, match="exists and is not empty"):
        merge_checkpoints(models[:2], (0.3, 0.7), out)
    with pytest.raises(ValueError, match="is one of the inputs"):
        merge_checkpoints(models[:2], (0.3, 0.7), models[0], overwrite=True)
    merge_checkpoints(models[:2], (0.3, 0.7), out, overwrite=True)
    assert_average(out, models[:2], [0.3, 0.7])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # the old output is gone, no partial left
