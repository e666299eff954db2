"""Training settings as dataclasses: each field's default, type and help are its flag's.

mlx-lm's `TrainingArgs` keeps a help string per field; here the `sft` and `dpo` flags are
generated from these fields (train/options.py), so each default and help text is written once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import click

from zephyr_local.params import SEED, Finite, LazyChoice

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Where each target sits inside a Mistral/Llama decoder block (mlx-lm's module names).
TARGET_PATHS = {
    "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj", "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "down_proj": "mlp.down_proj",
}


SCHEDULES = ("linear", "cosine")  # learning-rate decay after warmup (trainer.make_optimizer)
# The alignment handbook's LoRA recipes: TrainConfig's defaults are DPO's learning rate and
# schedule and SFT's dropout; each kind overrides the rest (dotted names for nested fields).
KIND_DEFAULTS = {
    "sft": {"learning_rate": 2e-4, "schedule": "cosine"},
    "dpo": {"lora.dropout": 0.0},
}


def _loss_names():
    from zephyr_local.train.losses import LOSSES  # imports mlx: read when a flag needs it

    return LOSSES


def _field(default=None, help=None, **flag):
    """A field whose metadata the `sft`/`dpo` flags are generated from (train/options.py).

    `help` is the flag's help text (None: none shown); `flag` may hold `type` (a click
    type), `names` (more spellings: "-m", "--lr"), `required` and `kinds` (the commands
    that have the flag, default both) or `flag=False`. A "" default shows as no default.
    """
    return field(default=default, metadata={"help": help, **flag})


def get_dotted(cfg, dotted: str):
    """A (nested) config field by its dotted name: "lora.rank"."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def set_dotted(cfg, dotted: str, value) -> None:
    """Set a (nested) config field by its dotted name."""
    *parents, last = dotted.split(".")
    setattr(get_dotted(cfg, ".".join(parents)) if parents else cfg, last, value)


_POSITIVE = Finite(min=0, min_open=True)
_DIR = click.Path(file_okay=False)


@dataclass
class LoRAConfig:
    """The adapter's shape."""

    rank: int = _field(16, "LoRA rank r.", type=click.IntRange(min=1))
    alpha: float = _field(16.0, "Scale = alpha / rank.", type=_POSITIVE)
    dropout: float = _field(0.05, "DPO defaults to 0, as TRL's disable_dropout: the policy "
                            "must equal the reference at step 0.",
                            type=Finite(0, 1, max_open=True))
    layers: int = _field(-1, "Adapt the last N blocks; -1 for all.", type=int)
    targets: tuple = _field(DEFAULT_TARGETS, "Comma-separated linear layers.")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass
class DataConfig:
    """How rows become token ids."""

    max_length: int = _field(1024, "Longest prompt+reply in tokens; longer replies are cut "
                             "(counted).", type=click.IntRange(min=2))
    max_prompt_length: int = _field(512, "Rows whose prompt alone is longer are dropped "
                                    "(counted).", type=click.IntRange(min=1))
    strict: bool = _field(False, "Fail on the first bad row (default: skip and count).")


@dataclass
class TrainConfig:
    """One training run (SFT or DPO); `for_kind` gives each kind's recipe defaults."""

    kind: str = _field("dpo", "sft or dpo (the command; no flag).", flag=False)
    model: str = _field("", "Base model: directory, store name or hub id (default: "
                        "zephyr-7b-beta-4bit).", names=("-m",))
    data: str = _field("", "JSONL file, directory with train.jsonl/valid.jsonl, hub dataset "
                       "id owner/name[:split], or the bundled example:sft / example:prefs.")
    eval_data: str | None = _field(None, "Evaluation data (default: valid.jsonl beside "
                                   "train.jsonl).")
    out: str = _field("", "Adapter directory to write.", required=True, type=_DIR)
    resume_adapter: str | None = _field(None, "Start from this adapter (frozen copy = the DPO "
                                        "reference).", type=_DIR)
    loss: str = _field("sigmoid", "The DPO loss.", type=LazyChoice(_loss_names), kinds=("dpo",))
    beta: float = _field(0.1, "DPO's beta: how far the policy may move from the reference.",
                         type=_POSITIVE, kinds=("dpo",))
    label_smoothing: float = _field(0.0, "eps of the robust loss.",
                                    type=Finite(0, 0.5, max_open=True), kinds=("dpo",))
    rpo_alpha: float = _field(0.0, "Add alpha x the chosen reply's mean NLL per token (RPO, "
                              "TRL's rpo_alpha): keeps chosen replies and their EOS likely; "
                              "0 is plain DPO.", type=Finite(min=0), kinds=("dpo",))
    learning_rate: float = _field(5e-6, "Peak learning rate.", type=_POSITIVE, names=("--lr",))
    schedule: str = _field("linear", "Decay after warmup.", type=click.Choice(SCHEDULES))
    warmup_ratio: float = _field(0.1, "Fraction of the steps warming up.", type=Finite(0, 1))
    weight_decay: float = _field(0.0, "AdamW weight decay.", type=Finite(min=0))
    max_grad_norm: float = _field(1.0, "Clip gradients; 0 disables.", type=Finite(min=0))
    batch_size: int = _field(2, "Rows (pairs for DPO) per micro-batch, of the whole job: "
                             "mlx.launch ranks split it.", type=click.IntRange(min=1))
    grad_accumulation: int = _field(1, "Micro-batches per optimizer step.",
                                    type=click.IntRange(min=1))
    grad_checkpoint: bool = _field(False, "Recompute activations in the backward pass (less "
                                   "memory).")
    epochs: int = _field(1, "Passes over the data (unless --iters).", type=click.IntRange(min=1))
    iters: int | None = _field(None, "Optimizer steps (overrides --epochs).",
                               type=click.IntRange(min=1))
    seed: int = _field(0, "Seed for data order, initialization and dropout.", type=SEED)
    eval_every: int = _field(0, "Evaluate every N steps (always at the end).",
                             type=click.IntRange(min=0))
    save_every: int = _field(50, "Checkpoint every N steps.", type=click.IntRange(min=1))
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    data_config: DataConfig = field(default_factory=DataConfig)

    @classmethod
    def for_kind(cls, kind: str) -> TrainConfig:
        """The defaults of `zephyr-local sft` / `dpo`: these fields plus KIND_DEFAULTS[kind]."""
        cfg = cls(kind=kind)
        for dotted, value in KIND_DEFAULTS[kind].items():
            set_dotted(cfg, dotted, value)
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        lora = LoRAConfig(**d.pop("lora", {}))
        lora.targets = tuple(lora.targets)
        data = DataConfig(**d.pop("data_config", {}))
        return cls(**d, lora=lora, data_config=data)
