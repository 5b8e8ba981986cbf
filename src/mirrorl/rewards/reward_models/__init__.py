"""Reward models for answers a rule cannot check (k1.5 sec. 2.3.5).

- `cot`: the Chain-of-Thought reward model, a causal LM that reasons and then writes a JSON verdict.
- `value_head`: the classic value-head reward model, its Bradley-Terry training and its scoring.
- `common`: their config sections and prompt template.

Nothing is imported here, so that `mirrorl.config` can import `common` without the engine.
"""
