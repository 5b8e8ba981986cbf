"""A user-defined generator for the seam tests: implements `mirrorl.types.Generator` with no model.

It reads the built-in task's prompt ('a=3 b=2 c=5. sum a-c?'), and answers right or off by one
as a seeded coin decides, so rewards vary from sample to sample and the run stays reproducible.
"""

import random
import re

from mirrorl.types import Completion, GenerateResult


class ScriptedGenerator:
    def __init__(self, tokenizer, right: float = 0.5) -> None:
        self.tokenizer, self.right, self.version = tokenizer, right, 0
        self.calls: list[tuple[int, float, int]] = []  # (requests, temperature, weight version) per call
        self.updates: list[int] = []

    def update_weights(self, version, state) -> None:
        assert state, "the trainer publishes its weights"
        self.version = version
        self.updates.append(version)

    def generate(self, requests, params, seed) -> GenerateResult:
        self.calls.append((len(requests), params.temperature, self.version))
        rng = random.Random(seed)
        completions = []
        for request in requests:
            prompt = self.tokenizer.decode(request.prompt_ids, skip_special_tokens=True)
            total = sum(int(d) for d in re.findall(r"=(\d)", prompt))
            answer = total if params.temperature == 0 or rng.random() < self.right else total + 1
            ids = self.tokenizer(f"answer:{answer}", add_special_tokens=False)["input_ids"]
            ids = [*ids, self.tokenizer.eos_token_id][: params.max_new_tokens]
            completions.append(Completion(ids, [-0.5] * len(ids), "stop"))
        new_tokens = sum(len(c.token_ids) for c in completions)
        return GenerateResult(completions, self.version, new_tokens=new_tokens, idle_fraction=0.0)
