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
