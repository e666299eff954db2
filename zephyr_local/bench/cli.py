"""`zephyr-local bench`: the command over the harness (harness.py) and its cases (cases.py).

Only click and the case registry (which loads no MLX) are imported at module level, so
`zephyr-local --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import click

from zephyr_local.cli_common import model_option


def _bench_cases_help() -> str:
    """--case's help: the registered cases (bench/cases.py; it does not import MLX)."""
    from zephyr_local.bench.cases import CASES

    full = [c.name for c in CASES.values() if "quick" not in c.modes]
    return (f"Run only this case (repeatable): {', '.join(CASES)}"
            f" ({', '.join(full)}: --full only).")


@click.command()
@click.option("--quick", "mode", flag_value="quick", default=True,
              help="Small settings: under 2 minutes on a 2-core CPU (default).")
@click.option("--full", "mode", flag_value="full", help="Larger settings and more repeats.")
@model_option
@click.option("--case", "cases", multiple=True, help=_bench_cases_help())
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Results folder (default: benchmarks/results in the checkout).")
def bench(mode, model, cases, out_dir) -> None:
    """Benchmark zephyr-local against mlx-lm, naive designs and the hardware limit.

    Without --model it builds the test model. Writes <date>-<machine>.json, .md and
    .png to the results folder and prints the table.

    Example: zephyr-local bench --quick
    """
    from zephyr_local import display, store
    from zephyr_local.bench import harness

    if model is not None:
        model = str(store.resolve_model(model))

    with display.ProgressBars() as bars:
        cases_bar = bars("Benchmark")
        run = harness.run(mode, model, list(cases) or None,
                          progress=lambda msg: bars.progress.console.print(f"... {msg}"),
                          on_case=lambda done, total, name: cases_bar(done, total, name))
    out = Path(out_dir) if out_dir else store.home_dir() / "benchmarks" / "results"
    paths = harness.write(run, out)
    click.echo(paths["md"].read_text())
    click.echo(f"Wrote {paths['json']}, {paths['md'].name}, {paths['png'].name}")


COMMANDS = (bench,)
