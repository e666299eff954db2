"""Rich progress bars and tables for the commands (the library reports through callbacks)."""

from __future__ import annotations

import sys
from pathlib import Path

from zephyr_local.atomic import human_bytes


class DownloadBar:
    """One rich bar on stderr for a whole pull (bytes, speed, time left), started lazily."""

    def __enter__(self):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
        self.task = None
        return self

    def note(self, line: str) -> None:
        self.progress.console.print(line, highlight=False)

    def update(self, name: str, done: int, total: int) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("", total=total)
        self.progress.update(self.task, description=name, completed=done, total=total)

    def __exit__(self, *exc) -> None:
        self.progress.stop()


class ProgressBars:
    """Rich progress bars on stderr; `bars(title)` is a library progress callback."""

    def __enter__(self):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[what]}"),
            console=Console(stderr=True), transient=False)
        self.started = False  # started by the first update: errors before any work stay clean
        return self

    def __exit__(self, *exc):
        if self.started:
            self.progress.stop()

    def __call__(self, title: str):
        task = None

        def update(done: int, total: int, what: str) -> None:
            nonlocal task
            if not self.started:
                self.progress.start()
                self.started = True
            if task is None:
                task = self.progress.add_task(title, total=total, what="")
            self.progress.update(task, completed=done, total=total, what=what)

        return update


def training_progress(kind: str):
    """`sft`/`dpo`'s rich progress bar, fed by the run's events; returns (callback, progress)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                        console=Console(stderr=True))
    state = {"work": {}}

    def on_event(event: str, payload) -> None:
        if event == "work":  # tokenizing, the reference pass: before the first step
            if not progress.live.is_started:
                progress.start()
            tasks = state["work"]
            if payload["what"] not in tasks:
                tasks[payload["what"]] = progress.add_task(payload["what"], total=payload["total"],
                                                           info="")
            progress.update(tasks[payload["what"]], completed=payload["done"],
                            total=payload["total"], description=payload["what"])
        elif event == "data":
            for tag, ds in (("train", payload["train"]), ("eval", payload["eval"])):
                if ds is not None:
                    progress.console.print(f"[bold]{tag} data[/] {ds.source}: {ds.summary.line()}")
                    for err in ds.summary.first_errors:
                        progress.console.print(f"  [yellow]{err}[/]")
        elif event == "reference":
            how = "loaded from cache" if payload["cached"] else "computed and cached"
            progress.console.print(f"reference log-probs ({payload['data']}, {payload['rows']} "
                                   f"sequences): {how} {payload['path']}")
        elif event == "start":
            if not progress.live.is_started:
                progress.start()
            state["task"] = progress.add_task(kind, total=payload["total"],
                                              completed=payload["start"], info="")
        elif event == "step":
            progress.update(state["task"], completed=payload["step"], info=_step_info(payload))
        elif event == "eval":
            info = " ".join(f"{k}={v:.4g}" for k, v in payload.items()
                            if k != "step" and isinstance(v, float))
            progress.console.print(f"step {payload['step']} {info}")

    return on_event, progress


def _step_info(r: dict) -> str:
    keys = [("loss", "loss"), ("rewards/accuracies", "acc"), ("rewards/margins", "margin"),
            ("learning_rate", "lr"), ("tokens_per_second", "tok/s"), ("peak_memory_gb", "GB")]
    return " ".join(f"{short} {r[k]:.4g}" for k, short in keys if k in r)


def print_quantize_report(r) -> None:
    """The quantization report as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Quantized {Path(r.source).name} -> {r.output}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    head = f", head {r.head_bits}-bit" if r.head_bits else ""
    rows = [
        ("settings", f"{r.bits}-bit, group {r.group_size}, {r.dtype}{head}"),
        ("size", f"{human_bytes(r.source_bytes)} -> {human_bytes(r.output_bytes)}"),
        (f"bits/weight ({r.bits}-bit layers)", f"{r.bits_per_weight:.3f}"),
        *([("bits/weight (embedding, head)", f"{r.head_bits_per_weight:.3f}")]
          if r.head_bits_per_weight else []),
        ("bits/weight (all parameters)", f"{r.overall_bits_per_weight:.3f}"),
        ("time", f"{r.seconds:.1f} s (quantize {r.quantize_seconds:.1f} s)"),
        ("peak memory, quantizing",
         f"{r.quantize_peak_rss_gb:.2f} GB RSS, {r.quantize_peak_mlx_gb:.2f} GB MLX"),
        *([("peak memory, with evaluation",
            f"{r.peak_rss_gb:.2f} GB RSS, {r.peak_mlx_gb:.2f} GB MLX")] if r.quality else []),
    ]
    if r.quality:
        qd = r.quality
        rows += [
            ("perplexity source -> quantized",
             f"{qd['source_perplexity']:.3f} -> {qd['quantized_perplexity']:.3f}"),
            ("mean KL(source || quantized)", f"{qd['mean_kl']:.5f} nats"),
            ("eval text", f"{qd['tokens']} tokens in {qd['chunks']} chunks"),
        ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


def stdout_is_terminal() -> bool:
    """Tables for people at a terminal; JSON when stdout is a pipe or a file."""
    return sys.stdout.isatty()


def print_metrics_table(result: dict) -> None:
    """`evaluate`'s result as a rich table on stdout: what was evaluated, then each metric."""
    from rich.console import Console
    from rich.table import Table

    adapter = result.get("adapter") or "the base"
    table = Table(title=f"{result.get('kind', '')} evaluation of {adapter}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if isinstance(value, dict):
            continue  # the data summary: its own line below
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        table.add_row(key, shown)
    console = Console()
    console.print(table)
    summary = result.get("summary")
    if isinstance(summary, dict):
        console.print("data: " + ", ".join(f"{k} {v}" for k, v in summary.items()
                                           if not isinstance(v, (list, dict))))


def print_models(rows, title: str) -> None:
    """The `models` table: name, size, dtype, quantization, bits per weight, source."""
    from rich.console import Console
    from rich.table import Table

    from zephyr_local.hfcache import HF_CACHE_MARK

    table = Table(title=title)
    table.add_column("name", no_wrap=True)
    for col in ("size", "dtype", "quant", "bits/w"):
        table.add_column(col)
    table.add_column("source", overflow="fold")
    for r in rows:
        quant = f"{r.bits}-bit g{r.group_size}" if r.bits else "-"
        bpw = f"{r.bits_per_weight:.2f}" if r.bits_per_weight else "?"
        source = "HF cache (shared)" if r.source == HF_CACHE_MARK else r.source or "local"
        table.add_row(r.name, human_bytes(r.size_bytes), r.dtype, quant, bpw, source)
    Console().print(table)
