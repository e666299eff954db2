"""Training settings as dataclasses (flags fill them; defaults are the recipe's)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Where each target sits inside a Mistral/Llama decoder block (mlx-lm's module names).
TARGET_PATHS = {
    "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj", "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "down_proj": "mlp.down_proj",
}


@dataclass
class LoRAConfig:
    """The adapter's shape."""

    rank: int = field(default=16, metadata={"help": "LoRA rank r."})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha; scale = alpha / rank."})
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    layers: int = field(default=-1, metadata={"help": "Adapt the last N blocks; -1 for all."})
    targets: tuple = field(default=DEFAULT_TARGETS, metadata={"help": "Linear layers to adapt."})

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass
class DataConfig:
    """How rows become token ids."""

    max_length: int = field(default=1024, metadata={"help": "Longest prompt+completion."})
    max_prompt_length: int = field(default=512, metadata={"help": "Longest prompt; longer rows are dropped."})
    strict: bool = field(default=False, metadata={"help": "Fail on the first bad row."})


@dataclass
class TrainConfig:
    """One training run (SFT or DPO)."""

    kind: str = field(default="dpo", metadata={"help": "sft or dpo."})
    model: str = field(default="", metadata={"help": "Model directory."})
    data: str = field(default="", metadata={"help": "Training data."})
    eval_data: str | None = field(default=None, metadata={"help": "Evaluation data."})
    out: str = field(default="", metadata={"help": "Adapter directory."})
    resume_adapter: str | None = field(default=None, metadata={"help": "Adapter to continue from."})
    loss: str = field(default="sigmoid", metadata={"help": "DPO loss: sigmoid, ipo, hinge, robust."})
    beta: float = field(default=0.1, metadata={"help": "DPO beta."})
    label_smoothing: float = field(default=0.0, metadata={"help": "eps for the robust loss."})
    rpo_alpha: float = field(default=0.0, metadata={
        "help": "DPO: add alpha x the chosen reply's mean NLL per token (RPO); 0 is plain DPO."})
    learning_rate: float = field(default=5e-6, metadata={"help": "Peak learning rate."})
    schedule: str = field(default="linear", metadata={"help": "linear or cosine decay."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of steps warming up."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip gradients; 0 disables."})
    batch_size: int = field(default=2, metadata={"help": "Rows (pairs) per micro-batch."})
    grad_accumulation: int = field(default=1, metadata={"help": "Micro-batches per step."})
    grad_checkpoint: bool = field(default=False, metadata={"help": "Recompute activations."})
    epochs: int = field(default=1, metadata={"help": "Passes over the data (if no iters)."})
    iters: int | None = field(default=None, metadata={"help": "Optimizer steps (overrides epochs)."})
    seed: int = field(default=0, metadata={"help": "Seed for data order, init and dropout."})
    eval_every: int = field(default=0, metadata={"help": "Evaluate every N steps; 0: at the end."})
    save_every: int = field(default=50, metadata={"help": "Checkpoint every N steps."})
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    data_config: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        lora = LoRAConfig(**d.pop("lora", {}))
        lora.targets = tuple(lora.targets)
        data = DataConfig(**d.pop("data_config", {}))
        return cls(**d, lora=lora, data_config=data)
