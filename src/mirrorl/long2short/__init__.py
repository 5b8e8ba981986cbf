"""long2short (k1.5 sec. 2.4): transfer a long-CoT model's reasoning into a short-CoT model: weight merging, shortest
rejection sampling, DPO preference pairs, and the Figure 7 comparison."""
