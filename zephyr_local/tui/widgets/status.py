"""The status bar: model, backend, speed and lookup acceptance of the last reply, context
gauge, memory."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.widgets import Static

GAUGE_WIDTH = 8


def gauge(used: int, budget: int, width: int = GAUGE_WIDTH) -> str:
    """A text bar of `width` cells for used/budget."""
    fill = 0 if budget <= 0 else min(width, round(width * used / budget))
    return "█" * fill + "░" * (width - fill)


def describe_quantization(quant: dict | None) -> str:
    if not quant:
        return "full precision"
    return f"{quant.get('bits', '?')}-bit/g{quant.get('group_size', '?')}"


def describe_model(loaded) -> str:
    """The model's name as the status bar shows it (loading.LoadedModel)."""
    name = f"{loaded.path.name} · {describe_quantization(loaded.quantization)}"
    return name + (f" + {Path(loaded.adapter_path).name}" if loaded.adapter_path else "")


class StatusBar(Static):
    """One line of facts about the model and the last reply."""

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.model = "loading model…"
        self.backend = ""
        self.stats = None
        self.context = (0, 0)

    def on_mount(self) -> None:
        self._show()

    def set_model(self, model: str, backend: str) -> None:
        self.model, self.backend = model, backend
        self._show()

    def show_model(self, loaded) -> None:
        """The model (loading.LoadedModel) and the backend it runs on."""
        from zephyr_local.backend import backend_name

        self.set_model(describe_model(loaded), backend_name())

    def set_stats(self, stats) -> None:
        self.stats = stats
        self._show()

    def show_reply(self, stats, budget: int) -> None:
        """The last reply's stats (engine.ReplyStats), and the context it filled."""
        self.stats, self.context = stats, (stats.prompt_tokens + stats.generation_tokens, budget)
        self._show()

    def set_context(self, used: int, budget: int) -> None:
        self.context = (used, budget)
        self._show()

    def _show(self) -> None:
        parts = [self.model] + ([self.backend] if self.backend else [])
        s = self.stats
        if s is not None:
            parts += [
                f"prefilled {s.prefilled_tokens} tok @ {s.prompt_tps:.0f} t/s",
                *([f"resumed {s.loaded_tokens} tok"] if s.loaded_tokens else []),
                f"gen {s.generation_tps:.1f} t/s",
                *([f"lookup {s.accepted_tokens}/{s.draft_tokens} ({s.acceptance:.0%})"]
                  if s.draft_tokens else []),
                f"TTFT {s.ttft_s:.2f}s",
            ]
        used, budget = self.context
        if budget:
            parts.append(f"ctx {gauge(used, budget)} {used}/{budget}")
        if s is not None:
            parts.append(f"peak {s.peak_memory_gb:.2f} GB")
        self.update(Text(" │ ".join(parts)))
