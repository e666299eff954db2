"""Click parameter types shared by every command: one definition of a valid number.

click's FloatRange compares with <, and every comparison with NaN is false, so
`--lr nan` passes any range; `inf` passes an open upper bound. Seeds end up in
`mx.random.seed` (uint64) as `seed * 1000003 + step`, so they are kept to 32 bits.
"""

from __future__ import annotations

import math

import click

SEED_MAX = 2**32 - 1


class Finite(click.FloatRange):
    """A FloatRange that also refuses NaN and infinity."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


SEED = click.IntRange(0, SEED_MAX)


class LazyChoice(click.Choice):
    """A Choice whose values are read on first use, from a function returning them.

    For choices that are the keys of a dict in a module that imports mlx (the DPO losses):
    building the command stays free of mlx, so `zephyr-local --help` stays instant.
    """

    def __init__(self, load, case_sensitive: bool = True):
        self._load, self._choices, self.case_sensitive = load, None, case_sensitive

    @property
    def choices(self) -> tuple:
        if self._choices is None:
            self._choices = tuple(self._load())
        return self._choices
