"""The `sft`/`dpo` flags, generated from the fields of TrainConfig (train/config.py).

Each field's metadata gives its flag's type, help and other spellings; its default is
`TrainConfig.for_kind(kind)`'s. A field of LoRAConfig is `--lora-<name>`, one of
DataConfig `--<name>`, so `FIELDS` (flag -> dotted field) is derived, not written out.
Only click and the (click-only) config module are imported, so `--help` stays instant.
"""

from __future__ import annotations

import dataclasses

import click

from zephyr_local.params import Finite
from zephyr_local.train.config import (
    KIND_DEFAULTS,
    DataConfig,
    LoRAConfig,
    TrainConfig,
    get_dotted,
)

# A nested dataclass field -> (its class, its flags' prefix).
_NESTED = {"lora": (LoRAConfig, "lora_"), "data_config": (DataConfig, "")}

# The flags that set no field of their own, at their place in `--help`.
_EXTRA = {
    "resume": click.option("--resume", is_flag=True,
                           help="Continue the stopped run in --out from its last checkpoint."),
    "lora_scale": click.option("--lora-scale", type=Finite(min=0, min_open=True), default=None,
                               help="Set the scale directly (overrides --lora-alpha)."),
    "as_json": click.option("--json", "as_json", is_flag=True,
                            help="Print only a JSON summary on stdout (progress stays on stderr)."),
}
# The order of `--help`; a field not named here comes last (before the data flags).
_ORDER = ("model", "data", "eval_data", "out", "resume", "resume_adapter", "lora_rank",
          "lora_alpha", "lora_scale", "lora_dropout", "lora_layers", "lora_targets",
          "learning_rate", "schedule", "warmup_ratio", "weight_decay", "max_grad_norm",
          "batch_size", "grad_accumulation", "grad_checkpoint", "epochs", "iters", "seed",
          "eval_every", "save_every", "as_json", "loss", "beta", "label_smoothing")


def _flag_fields(cls=TrainConfig, parent: str = "", prefix: str = "") -> dict:
    """{flag parameter name: (dotted field name, dataclass field)} of a config dataclass."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("flag", True) is False:
            continue
        if not parent and f.name in _NESTED:
            sub, sub_prefix = _NESTED[f.name]
            out.update(_flag_fields(sub, f"{f.name}.", sub_prefix))
        else:
            out[prefix + f.name] = (parent + f.name, f)
    return out


_FLAG_FIELDS = _flag_fields()
FIELDS = {name: dotted for name, (dotted, _) in _FLAG_FIELDS.items()}
_DATA_FLAGS = tuple(n for n, dotted in FIELDS.items() if dotted.startswith("data_config."))
_DEFAULTS = {kind: TrainConfig.for_kind(kind) for kind in KIND_DEFAULTS}


def config_option(name: str, kind: str = "dpo", **overrides):
    """The click option of one config field (`name` as in FIELDS), with its metadata."""
    dotted, f = _FLAG_FIELDS[name]
    meta = f.metadata
    default = get_dotted(_DEFAULTS[kind], dotted)
    if isinstance(default, tuple):
        default = ",".join(default)  # a comma-separated list on the command line
    kw = {"default": None if default == "" else default, "help": meta.get("help")}
    if isinstance(default, bool):
        kw["is_flag"] = True
    else:
        kw["type"] = meta.get("type")
        kw["show_default"] = kw["default"] is not None
    if meta.get("required"):
        kw["required"] = True
    kw.update(overrides)
    return click.option("--" + name.replace("_", "-"), *meta.get("names", ()), name, **kw)


def data_options(f):
    """--max-length, --max-prompt-length, --strict (shared by training and evaluate)."""
    for name in reversed(_DATA_FLAGS):
        f = config_option(name)(f)
    return f


def train_options(kind: str):
    """The flags of `sft` and `dpo`: every TrainConfig field that `kind` has, and _EXTRA."""
    names = [n for n, (_, f) in _FLAG_FIELDS.items() if n not in _DATA_FLAGS
             and kind in f.metadata.get("kinds", ("sft", "dpo"))] + list(_EXTRA)
    names = [n for n in _ORDER if n in names] + [n for n in names if n not in _ORDER]

    def deco(f):
        f = data_options(f)  # listed after the options above
        for name in reversed(names):
            f = (_EXTRA[name] if name in _EXTRA else config_option(name, kind))(f)
        return f

    return deco
