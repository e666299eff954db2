"""What `zephyr-local chat` was asked for, and the line of text under the input."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from zephyr_local.lookup import LookupOptions
from zephyr_local.sampling import SamplingOptions


@dataclass
class ChatConfig:
    """What `zephyr-local chat` was asked for."""

    model: str | None = field(default=None, metadata={"help": "model path, store name or hub id"})
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter directory"})
    models_dir: str | None = field(default=None, metadata={"help": "model store override"})
    system_prompt: str | None = field(default=None, metadata={"help": "for new conversations"})
    options: SamplingOptions = field(default_factory=SamplingOptions,
                                     metadata={"help": "sampling for new conversations"})
    context_budget: int | None = field(default=None, metadata={"help": "tokens; None = window"})
    history_path: str | Path | None = field(default=None,
                                            metadata={"help": "None = <home>/history.sqlite"})
    lookup: LookupOptions = field(default_factory=LookupOptions,
                                  metadata={"help": "prompt-lookup decoding"})


DISCLAIMER = "Replies may be inaccurate. The model runs offline, on this machine."
