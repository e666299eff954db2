"""Sampling options, checked, and turned into mlx-lm's sampler and processors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from zephyr_local.errors import ZephyrError
from zephyr_local.params import SEED_MAX


@dataclass
class SamplingOptions:
    """How a reply is sampled. Defaults are the zephyr-7b-beta model card's."""

    temperature: float = field(default=0.7, metadata={"help": "0 is greedy"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus mass, in (0, 1]"})
    top_k: int = field(default=50, metadata={"help": "0 disables"})
    min_p: float = field(default=0.0, metadata={"help": "in [0, 1); 0 disables"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "1.0 disables"})
    seed: int | None = field(default=None, metadata={"help": "seed for reproducible sampling"})
    max_tokens: int = field(default=256, metadata={"help": "reply length limit"})

    def validate(self) -> SamplingOptions:
        """Raise ZephyrError naming the first bad field."""
        floats = ("temperature", "top_p", "min_p", "repetition_penalty")
        checks = [(name, math.isfinite(getattr(self, name)), "must be a finite number")
                  for name in floats]
        checks += [
            ("temperature", self.temperature >= 0, "must be >= 0"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("top_k", self.top_k >= 0, "must be >= 0"),
            ("min_p", 0 <= self.min_p < 1, "must be in [0, 1)"),
            ("repetition_penalty", self.repetition_penalty > 0, "must be > 0"),
            ("max_tokens", self.max_tokens >= 1, "must be >= 1"),
            ("seed", self.seed is None or 0 <= self.seed <= SEED_MAX, f"must be in 0..{SEED_MAX}"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ZephyrError(f"{name} {rule} (got {getattr(self, name)})")
        return self

    def sampler(self):
        from mlx_lm.sample_utils import make_sampler

        return make_sampler(
            temp=self.temperature, top_p=self.top_p, min_p=self.min_p, top_k=self.top_k
        )

    def logits_processors(self):
        from mlx_lm.sample_utils import make_logits_processors

        penalty = None if self.repetition_penalty == 1.0 else self.repetition_penalty
        return make_logits_processors(repetition_penalty=penalty)
