"""A tiny random-weight Zephyr-architecture model with the real Zephyr tokenizer.

Tests and benchmarks build on it, and it lets a user try every command offline.
The tokenizer comes from the `mistral-common` package, whose `tokenizer.model.v1`
is byte-identical to Zephyr's (checked by sha256).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from zephyr_local.atomic import atomic_dir, check_writable
from zephyr_local.backend import COMPUTE_DTYPES
from zephyr_local.errors import ZephyrError

TOKENIZER_SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"

ZEPHYR_CHAT_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
    "{% endfor %}"
)

# zephyr-7b-beta's config.json, as published on the Hub (HuggingFaceH4/zephyr-7b-beta).
ZEPHYR_CONFIG = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "max_position_embeddings": 32768,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "torch_dtype": "bfloat16",
}

# Small enough to build in a second; every architectural feature of Zephyr kept
# (grouped-query attention, untied head, the full 32000-token vocabulary).
TINY_DIMS = {
    "hidden_size": 128,
    "intermediate_size": 352,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
}


def tokenizer_config() -> dict:
    """Zephyr's tokenizer_config.json, chat template included."""
    special = {"lstrip": False, "normalized": False, "rstrip": False,
               "single_word": False, "special": True}
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(i): {"content": tok, **special} for i, tok in enumerate(("<unk>", "<s>", "</s>"))
        },
        "additional_special_tokens": [],
        "bos_token": "<s>",
        "chat_template": ZEPHYR_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": True,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "</s>",
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": "LlamaTokenizer",
        "truncation_side": "left",
        "unk_token": "<unk>",
        "use_default_system_prompt": True,
    }


def zephyr_tokenizer_model() -> Path:
    """The real Zephyr tokenizer.model from mistral-common, checked by sha256."""
    try:
        import mistral_common
    except ImportError:
        raise ZephyrError(
            "the package mistral-common is needed: pip install mistral-common") from None
    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.exists():
        raise ZephyrError(f"{path}: missing from the installed mistral-common")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != TOKENIZER_SHA256:
        raise ZephyrError(f"{path}: sha256 {digest} is not Zephyr's tokenizer ({TOKENIZER_SHA256})")
    return path


def write_tokenizer_files(out: Path) -> None:
    """Zephyr's tokenizer files: tokenizer.model, tokenizer_config.json,
    special_tokens_map.json, and tokenizer.json (the fast tokenizer Zephyr ships,
    converted here from tokenizer.model by transformers)."""
    shutil.copyfile(zephyr_tokenizer_model(), out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2))
    special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    tok.backend_tokenizer.save(str(out / "tokenizer.json"))


def tiny_config(**dims) -> dict:
    """A Zephyr config with small dimensions (TINY_DIMS, overridden by `dims`)."""
    return {**ZEPHYR_CONFIG, **TINY_DIMS, **dims}


def create_test_model(
    out: Path, *, seed: int = 0, dtype: str = "float32", force: bool = False, **dims
) -> Path:
    """Write a random-weight Zephyr-architecture model in the Hugging Face layout.

    The directory is built beside `out` and renamed into place when complete.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    out = Path(out)
    if out.exists() and not force:
        raise ZephyrError(f"{out} already exists: pass --force to replace it")
    check_writable(out.parent)
    if dtype not in COMPUTE_DTYPES:
        raise ZephyrError(f"dtype {dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}")
    config = tiny_config(**dims)
    config["torch_dtype"] = dtype
    with atomic_dir(out) as tmp:
        mx.random.seed(seed)
        model = llama.Model(llama.ModelArgs.from_dict(config))
        # Scaled normal init keeps activations O(1) through the random layers.
        params = {}
        for name, value in tree_flatten(model.parameters()):
            if name.endswith("norm.weight"):
                params[name] = mx.ones(value.shape)
            else:
                params[name] = mx.random.normal(value.shape) * (value.shape[-1] ** -0.5)
        params = {k: v.astype(getattr(mx, dtype)) for k, v in params.items()}
        mx.save_safetensors(str(tmp / "model.safetensors"), params, metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        gen = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        write_tokenizer_files(tmp)
    return out


FULL_SIZE_SHARD_BYTES = 2 << 30  # about Zephyr's own shard size


def _shard_plan(shapes: dict, itemsize: int, shard_bytes: int) -> list[list[str]]:
    """Tensor names grouped into shards of at most `shard_bytes` (one tensor may exceed it)."""
    shards, size = [], 0
    for name, shape in shapes.items():
        nbytes = itemsize * _prod(shape)
        if not shards or size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def create_full_size_test_model(
    out: Path, *, seed: int = 0, dtype: str = "bfloat16", force: bool = False,
    progress=None,
) -> Path:
    """Write a Zephyr-7B-shaped random-weight model (~14.5 GB in bf16), shard by shard.

    For measuring `quantize` and memory at full size without downloading Zephyr.
    Only one ~2 GB shard is in memory at a time. `progress(done, total)` is
    called after each shard. The directory is renamed into place when complete.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    out = Path(out)
    if out.exists() and not force:
        raise ZephyrError(f"{out} already exists: pass --force to replace it")
    check_writable(out.parent)
    if dtype not in COMPUTE_DTYPES:
        raise ZephyrError(f"dtype {dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}")
    config = {**ZEPHYR_CONFIG, "torch_dtype": dtype}
    # Building the module only creates lazy initializers: it gives the shapes for free.
    shapes = {k: v.shape for k, v in tree_flatten(
        llama.Model(llama.ModelArgs.from_dict(config)).parameters())}
    mx_dtype = getattr(mx, dtype)
    plan = _shard_plan(shapes, mx_dtype.size, FULL_SIZE_SHARD_BYTES)
    with atomic_dir(out) as tmp:
        mx.random.seed(seed)
        weight_map = {}
        for i, names in enumerate(plan):
            shard_name = f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors"
            tensors = {}
            for name in names:
                shape = shapes[name]
                value = (mx.ones(shape) if name.endswith("norm.weight")
                         else mx.random.normal(shape) * (shape[-1] ** -0.5))
                tensors[name] = value.astype(mx_dtype)
                mx.eval(tensors[name])
                weight_map[name] = shard_name
            mx.save_safetensors(str(tmp / shard_name), tensors, metadata={"format": "pt"})
            del tensors
            if progress:
                progress(i + 1, len(plan))
        total = sum(mx_dtype.size * _prod(s) for s in shapes.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        gen = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        write_tokenizer_files(tmp)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    return out


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
