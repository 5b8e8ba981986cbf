"""Generation throughput: mirrorl's engine vs transformers `generate()`, side by side in one run.

Same model, same prompts, same batch size (sequences decoded together) and sampling settings
(temperature 1, no truncation, a max-token limit) on two models built locally: the embedded tiny
model and a ~10M-parameter Llama-style model, both freshly initialised, so response lengths
follow the model's own stop-token probability (geometric, most short, some long), as sampled
responses do. The engine's advantage is continuous batching: `generate()` keeps every row of a
batch decoding until its longest member ends, the engine refills a finished slot at once. Each
arm also reports its slot utilisation (useful tokens / (batch x decode steps)) to show it.

With `--policy runs/demo/sft/final` it also measures the demo's own jobs on its SFT policy: an RL
rollout (16 problems x 8 samples in 128 slots, 160 tokens at most) and an evaluation (200 x 4).

Usage: python benchmarks/engine.py [--prompts 256] [--batch 64] [--max-new-tokens 512] [--repeats 2]
                                   [--policy DIR]
Prints one JSON object as its last line: new tokens per second of both and their ratio, per workload.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mirrorl.config import ModelConfig, SamplingConfig
from mirrorl.data.encode import encode_prompt
from mirrorl.data.tasks import make_split
from mirrorl.models import build_tiny, load_policy
from mirrorl.rollout.engine import Engine
from mirrorl.rollout.hf_generate import hf_generate
from mirrorl.types import Request, SamplingParams

MODELS = {
    "tiny": ModelConfig(),
    "10m": ModelConfig(hidden_size=256, num_layers=10, num_heads=8, intermediate_size=1024, max_positions=1024),
}


def measure(name: str, model, tokenizer, prompts: list[list[int]], params: SamplingParams, repeats: int) -> dict:
    """Both arms on the same prompts and settings, alternated; the best of `repeats` runs each."""
    model.eval()
    engine = Engine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    eos, pad, batch = tokenizer.eos_token_id, tokenizer.pad_token_id, params.batch_size
    best = {"engine": 0.0, "generate": 0.0}
    utilisation = {}
    for repeat in range(repeats):  # alternate the arms so machine noise hits both alike
        start = time.perf_counter()
        result = engine.generate([Request(p) for p in prompts], params, seed=repeat)
        best["engine"] = max(best["engine"], result.new_tokens / (time.perf_counter() - start))
        utilisation["engine"] = 1 - result.idle_fraction
        start = time.perf_counter()
        done = hf_generate(model, prompts, params, eos, pad, seed=repeat)
        tokens = sum(len(g.token_ids) for g in done)
        best["generate"] = max(best["generate"], tokens / (time.perf_counter() - start))
        steps = sum(max(len(g.token_ids) for g in done[i : i + batch]) for i in range(0, len(done), batch))
        utilisation["generate"] = tokens / (steps * batch)
    return {
        "workload": name, "parameters": sum(p.numel() for p in model.parameters()), "requests": len(prompts),
        "batch": batch, "max_new_tokens": params.max_new_tokens,
        "engine_tokens_per_second": round(best["engine"], 1), "generate_tokens_per_second": round(best["generate"], 1),
        "ratio": round(best["engine"] / best["generate"], 3),
        "engine_slot_utilisation": round(utilisation["engine"], 3),
        "generate_slot_utilisation": round(utilisation["generate"], 3),
        "mean_response_tokens": round(tokens / len(done), 1),
    }


def demo_workloads(path: str, repeats: int) -> list[dict]:
    """The demo's own two generation jobs on its SFT policy: one RL rollout and one evaluation."""
    model, tokenizer = load_policy(path, torch.device("cpu"))
    problems = make_split(200, seed=1)
    params = SamplingConfig(temperature=1.0, max_new_tokens=160, batch_size=128, repeat={"enabled": False}).params()
    rollout = [encode_prompt(tokenizer, p.prompt, True) for p in problems[:16] for _ in range(8)]
    evaluation = [encode_prompt(tokenizer, p.prompt, True) for p in problems for _ in range(4)]
    return [measure("demo_rl_rollout", model, tokenizer, rollout, params, repeats),
            measure("demo_eval", model, tokenizer, evaluation, params, repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--policy", default=None, help="the demo's SFT policy: also measure the demo's own jobs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens, batch_size=args.batch,
                            repeat={"enabled": False}).params()
    results = []
    for name, spec in MODELS.items():
        model, tokenizer = build_tiny(spec, seed=0)
        prompts = [encode_prompt(tokenizer, p.prompt, True) for p in make_split(args.prompts, seed=1)]
        results.append(measure(f"{name}_random_init", model, tokenizer, prompts, params, args.repeats))
    if args.policy:
        results += demo_workloads(args.policy, args.repeats)
    for row in results:
        print(f"{row['workload']}: engine {row['engine_tokens_per_second']:.0f} tok/s, generate() "
              f"{row['generate_tokens_per_second']:.0f} tok/s, ratio {row['ratio']:.2f}")
    print(json.dumps({"benchmark": "engine_vs_generate", "results": results}))


if __name__ == "__main__":
    main()
