"""mirrorl's generation engine: continuous batching over a preallocated KV cache, colocated with training.

The in-process `mirrorl.types.Generator`. What it does, and how:
- One forward per decode step for `batch_size` slots. Each slot holds one sequence; its keys and
  values live in a cache preallocated once per call ([slots, kv_heads, max_len, head_dim] per
  layer) and are written in place, so no step copies the cache (HF's DynamicCache concatenates).
- Continuous batching: when a sequence finishes, its slot is refilled from the queue at once (the
  newly admitted prompts are prefilled together, in chunks of similar length), while the other
  slots keep decoding.
- The model is the training model itself (same weights, same process): an optimizer step is
  visible to the next call at no cost.
- Temperature, top-p, top-k, stop tokens (EOS and `stop_token_ids`), a per-request token budget (partial rollouts) and a
  maximum response length; a seeded torch.Generator makes a call reproducible.
- Every token comes with its log-probability under the model (log-softmax of the raw logits,
  i.e. what a forward pass gives; temperature and truncation only shape the sampling).
- Repeat detection (`mirrorl.rollout.repeat`) stops a looping tail with finish reason "repeat".

It drives any Hugging Face causal LM whose forward takes `position_ids`, a prepared 4D additive
attention mask and a `Cache` (Llama, Qwen2/3, Mistral, Gemma, GPT-2... in transformers 5). The
cache plugs in through transformers' `Cache`/`CacheLayerMixin` extension point. On CUDA the same
code runs unchanged (not measured here: no GPU).

Legend: S slots, R rows of a prefill, W attended width, P repeat periods, V vocabulary.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin

from mirrorl.rollout.repeat import advance, fires, tail_runs
from mirrorl.types import Completion, GenerateResult, Request, SamplingParams


class _SlotPlan:
    """Where the next forward writes: shared by all layers of one SlotCache."""

    def __init__(self) -> None:
        self.rows: Tensor | None = None  # prefill: [R] slot of each row
        self.positions: Tensor | None = None  # prefill: [R, Q] cache position of each column; decode: [S, 1]
        self.width = 0  # decode: attended width W


class _SlotLayer(CacheLayerMixin):
    """One layer's preallocated keys/values; the last position is a write-only trash column for padding."""

    def __init__(self, plan: _SlotPlan, slots: int, max_len: int) -> None:
        super().__init__()
        self.plan, self.slots, self.max_len = plan, slots, max_len

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        shape = (self.slots, key_states.shape[1], self.max_len + 1, key_states.shape[3])
        self.keys = torch.zeros(shape, dtype=key_states.dtype, device=key_states.device)
        self.values = torch.zeros(shape, dtype=value_states.dtype, device=value_states.device)
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        plan = self.plan
        if plan.rows is not None:  # prefill: the rows attend only to their own new keys
            rows = plan.rows[:, None].expand_as(plan.positions)  # [R, Q]
            self.keys[rows, :, plan.positions] = key_states.transpose(1, 2)
            self.values[rows, :, plan.positions] = value_states.transpose(1, 2)
            return key_states, value_states
        slots = torch.arange(self.slots, device=key_states.device)  # decode: one new key per slot
        self.keys[slots, :, plan.positions[:, 0]] = key_states[:, :, 0]
        self.values[slots, :, plan.positions[:, 0]] = value_states[:, :, 0]
        return self.keys[:, :, : plan.width], self.values[:, :, : plan.width]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.plan.width, 0

    def get_seq_length(self) -> int:
        return 0  # positions are always passed explicitly

    def get_max_length(self) -> int:
        return self.max_len


class SlotCache(Cache):
    """A transformers Cache of `slots` independent sequences of up to `max_len` tokens each."""

    def __init__(self, num_layers: int, slots: int, max_len: int) -> None:
        self.plan = _SlotPlan()
        super().__init__(layers=[_SlotLayer(self.plan, slots, max_len) for _ in range(num_layers)])


def _additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """Boolean mask -> additive float mask [.., 1, Q, W] (finite minimum, so no row is all -inf)."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def pick_tokens(logits: Tensor, params: SamplingParams, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Sample (or take the argmax of) [S, V] logits; returns tokens [S] and their raw log-probs [S]."""
    logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)  # [S, V]
    if params.temperature == 0:
        tokens = logits.argmax(-1)
    else:
        scores = logits / params.temperature
        if params.top_k:
            kth = torch.topk(scores, min(params.top_k, scores.shape[-1]), dim=-1).values[:, -1:]  # [S, 1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if params.top_p < 1:
            ordered, order = scores.sort(dim=-1, descending=True)
            mass_before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)  # [S, V]
            drop = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order, mass_before > params.top_p)
            scores = scores.masked_fill(drop, float("-inf"))
        tokens = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
    return tokens, logprobs.gather(1, tokens[:, None]).squeeze(1)


def length_chunks(lengths: Sequence[int]) -> list[list[int]]:
    """Split rows into prefill chunks of similar length, longest first; returns row indices.

    A prefill pads its rows to the longest, so one continued long trajectory would make every short
    prompt admitted with it cost as much as itself. A chunk ends where a row is at most half the
    chunk's longest, so at least half of every padded row is real tokens, for one more forward per
    halving of the length.
    """
    chunks: list[list[int]] = []
    for row in sorted(range(len(lengths)), key=lambda r: -lengths[r]):
        if chunks and 2 * lengths[row] > lengths[chunks[-1][0]]:
            chunks[-1].append(row)
        else:
            chunks.append([row])
    return chunks


class Engine:
    """Colocated continuous-batching generator over a model's own weights (a `mirrorl.types.Generator`)."""

    def __init__(self, model: PreTrainedModel, eos_id: int, pad_id: int, version: int = 0) -> None:
        self.model, self.eos_id, self.pad_id = model, eos_id, pad_id
        self.version = version  # of the weights: the training model's own, so set by `update_weights`
        # newer transformers (5.24 here) call the cache argument `cache` and deprecate `past_key_values`
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    def update_weights(self, version: int, state: Mapping[str, Tensor]) -> None:
        """Colocated: the engine runs the training model's parameters, so only the version changes."""
        self.version = version

    @torch.no_grad()
    def generate(self, requests: Sequence[Request], params: SamplingParams, seed: int) -> GenerateResult:
        """Extend every request; completions in request order.

        A request ends with "stop" at a stop token, "length" when its response (prefix included)
        reaches `params.max_new_tokens`, "budget" after `budget` new tokens, and "repeat" when its
        tail loops.
        """
        if not requests:
            return GenerateResult([], self.version, new_tokens=0, idle_fraction=0.0)
        cap = params.max_new_tokens
        for index, request in enumerate(requests):
            if len(request.prefix_ids) >= cap or request.budget == 0:
                raise ValueError(f"request {index} has no room left: its response already holds "
                                 f"{len(request.prefix_ids)} of {cap} tokens (budget {request.budget})")
        max_len = max(len(r.prompt_ids) for r in requests) + cap
        run = _Run(self, requests, params, cap, max_len, seed)
        was_training = self.model.training
        self.model.eval()
        try:
            completions = run.finish()
        finally:
            self.model.train(was_training)
        return GenerateResult(completions, self.version, new_tokens=sum(len(tokens) for tokens in run.tokens),
                              idle_fraction=1 - run.busy_slot_steps / max(1, run.slot_steps))


class _Run:
    """The state of one `Engine.generate` call: the queue, the slots and their sequences."""

    def __init__(self, engine: Engine, requests: Sequence[Request], params: SamplingParams, cap: int,
                 max_len: int, seed: int) -> None:
        self.engine, self.requests, self.params, self.cap = engine, requests, params, cap
        device = engine.device
        self.slots = min(params.batch_size, len(requests))
        self.cache = SlotCache(engine.model.config.get_text_config().num_hidden_layers, self.slots, max_len)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.queue = deque(range(len(requests)))
        self.owner = [-1] * self.slots  # request index held by each slot, -1 when free
        self.cached = torch.zeros(self.slots, dtype=torch.long, device=device)  # tokens in each slot's cache
        self.last = torch.full((self.slots,), engine.pad_id, dtype=torch.long, device=device)  # next input token
        self.response = torch.zeros(self.slots, max_len, dtype=torch.long, device=device)  # response tokens
        self.response_len = torch.zeros(self.slots, dtype=torch.long, device=device)
        self.new = torch.zeros(self.slots, dtype=torch.long, device=device)  # tokens generated in this call
        self.limit = torch.zeros(self.slots, dtype=torch.long, device=device)  # new-token budget of this call
        self.repeat = params.repeat
        self.runs = torch.zeros(self.slots, self.repeat.max_period if self.repeat else 1, dtype=torch.long,
                                device=device)
        self.stop_ids = torch.tensor(sorted({engine.eos_id, *params.stop_token_ids}), device=device)
        self.tokens: list[list[int]] = [[] for _ in requests]
        self.logprobs: list[list[float]] = [[] for _ in requests]
        self.results: list[Completion | None] = [None] * len(requests)
        self.busy_slot_steps = self.slot_steps = 0

    def finish(self) -> list[Completion]:
        while self.queue or any(owner >= 0 for owner in self.owner):
            free = [s for s, owner in enumerate(self.owner) if owner < 0]
            if free and self.queue:
                chosen = [self.queue.popleft() for _ in free[: len(self.queue)]]
                lengths = [len(self.requests[i].prompt_ids) + len(self.requests[i].prefix_ids) for i in chosen]
                for chunk in length_chunks(lengths):
                    self._admit(free[: len(chunk)], [chosen[i] for i in chunk])
                    free = free[len(chunk):]
            if any(owner >= 0 for owner in self.owner):
                self._decode()
        return self.results  # type: ignore[return-value]

    def _admit(self, free: list[int], chosen: list[int]) -> None:
        """Prefill the `chosen` requests into `free` slots and sample their first token."""
        engine, device = self.engine, self.engine.device
        contexts = [self.requests[i].prompt_ids + self.requests[i].prefix_ids for i in chosen]
        width = max(len(c) for c in contexts)
        ids = torch.full((len(chosen), width), engine.pad_id, dtype=torch.long)
        offsets = torch.tensor([width - len(c) for c in contexts])  # left padding of each row
        for row, context in enumerate(contexts):
            ids[row, offsets[row]:] = torch.tensor(context)
        columns = torch.arange(width)
        positions = (columns[None, :] - offsets[:, None]).clamp(min=0)  # [R, Q]
        real = columns[None, :] >= offsets[:, None]  # [R, Q]
        allowed = ((columns[None, :, None] >= columns[None, None, :])
                   & (real[:, None, :] | torch.eye(width, dtype=torch.bool)))
        plan = self.cache.plan
        plan.rows = torch.tensor(free, device=device)
        plan.positions = torch.where(real, positions, self.cache.layers[0].max_len).to(device)  # padding -> trash
        logits = engine.model(
            input_ids=ids.to(device), position_ids=positions.to(device),
            attention_mask=_additive(allowed.to(device), engine.dtype), **{engine.cache_arg: self.cache},
            use_cache=True, logits_to_keep=1,
        ).logits[:, -1]  # [R, V]
        plan.rows = None
        slots = torch.tensor(free, device=device)
        self.cached[slots] = torch.tensor([len(c) for c in contexts], device=device)
        self.response_len[slots] = 0
        self.runs[slots] = 0
        for slot, index in zip(free, chosen):
            request = self.requests[index]
            prefix = request.prefix_ids
            self.response[slot, : len(prefix)] = torch.tensor(prefix, dtype=torch.long)
            self.response_len[slot] = len(prefix)
            if self.repeat and prefix:
                self.runs[slot] = tail_runs(prefix, self.repeat.max_period).to(device)
            room = self.cap - len(prefix)
            self.limit[slot] = room if request.budget is None else min(request.budget, room)
            self.owner[slot] = index
        self.new[slots] = 0
        tokens, logprobs = pick_tokens(logits, self.params, self.generator)
        self._accept(slots, tokens, logprobs)

    def _decode(self) -> None:
        """One token for every slot (free slots compute a throwaway token)."""
        engine, plan = self.engine, self.cache.plan
        plan.positions = self.cached[:, None]
        plan.width = int(self.cached.max()) + 1
        allowed = torch.arange(plan.width, device=engine.device)[None, None, :] <= self.cached[:, None, None]
        logits = engine.model(
            input_ids=self.last[:, None], position_ids=self.cached[:, None],
            attention_mask=_additive(allowed, engine.dtype), use_cache=True, **{engine.cache_arg: self.cache},
        ).logits[:, -1]  # [S, V]
        busy = [s for s, owner in enumerate(self.owner) if owner >= 0]
        active = torch.zeros_like(self.cached, dtype=torch.bool)
        active[busy] = True
        self.cached = torch.where(active, self.cached + 1, 0)  # a free slot keeps rewriting position 0
        self.busy_slot_steps += len(busy)
        self.slot_steps += self.slots
        tokens, logprobs = pick_tokens(logits, self.params, self.generator)
        slots = torch.tensor(busy, device=engine.device)
        self._accept(slots, tokens[slots], logprobs[slots])

    def _accept(self, slots: Tensor, tokens: Tensor, logprobs: Tensor) -> None:
        """Append one sampled token to each of `slots`; free the slots whose sequence ended."""
        rule = self.repeat
        if rule:
            self.runs[slots] = advance(self.runs[slots], self.response[slots], self.response_len[slots], tokens)
        self.response[slots, self.response_len[slots]] = tokens
        self.response_len[slots] += 1
        self.new[slots] += 1
        self.last[slots] = tokens
        stopped = torch.isin(tokens, self.stop_ids)
        repeated = fires(self.runs[slots], rule) if rule else torch.zeros_like(stopped)
        at_cap = self.response_len[slots] >= self.cap
        at_budget = self.new[slots] >= self.limit[slots]
        for slot, token, logprob, stop, loop, cap, budget in zip(
            slots.tolist(), tokens.tolist(), logprobs.tolist(), stopped.tolist(), repeated.tolist(),
            at_cap.tolist(), at_budget.tolist(),
        ):
            index = self.owner[slot]
            self.tokens[index].append(token)
            self.logprobs[index].append(logprob)
            reason = "stop" if stop else "repeat" if loop else "length" if cap else "budget" if budget else None
            if reason:
                self.results[index] = Completion(self.tokens[index], self.logprobs[index], reason)
                self.owner[slot] = -1
