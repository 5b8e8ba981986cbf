"""mirrorl: the Kimi k1.5 RL recipe (arXiv 2501.12599) as a small, tested framework."""

__version__ = "0.1.0"
