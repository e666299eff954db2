"""The tensors of an mlx-lm KV cache: make one, check a saved one, compact one to save.

mlx-lm's `KVCache` keeps keys and values of shape (1, kv_heads, T, head_dim) in
buffers that grow 256 tokens at a time; `QuantizedKVCache` keeps each as a
(packed uint32, scales, biases) triple quantized in groups along head_dim.
`save_prompt_cache` writes `[c.state for c in cache]` flattened (`"3.0"` is layer
3's keys, `"3.0.1"` their scales when quantized) with the class names in the
metadata (`"1.3"`), and `load_prompt_cache` rebuilds each layer by that class
name. What this module adds: a saved file is checked, before any tensor is read,
to hold exactly the tensors this model's cache would have for its token count,
and a cache is saved without the unused tail of its buffers.
"""

from __future__ import annotations

FLOAT_CLASS = "KVCache"
QUANTIZED_CLASS = "QuantizedKVCache"


def head_dim(config: dict) -> int:
    """The attention head's width: `head_dim`, else hidden_size / num_attention_heads."""
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def new_cache(model, kv_bits: int | None, group_size: int) -> list:
    """mlx-lm's prompt cache for `model`; with `kv_bits`, quantized from the first token."""
    from mlx_lm.models.cache import KVCache, QuantizedKVCache, make_prompt_cache

    cache = make_prompt_cache(model)
    if not kv_bits:
        return cache
    return [QuantizedKVCache(group_size=group_size, bits=kv_bits) if type(c) is KVCache else c
            for c in cache]


def compact(cache: list) -> list:
    """Copies of the layers holding only their first `offset` tokens (views, not copies)."""
    from mlx_lm.models.cache import KVCache, QuantizedKVCache

    out = []
    for c in cache:
        n = c.offset
        if type(c) is KVCache and c.keys is not None:
            small = KVCache()
            small.keys, small.values = c.keys[..., :n, :], c.values[..., :n, :]
        elif type(c) is QuantizedKVCache and c.keys is not None:
            small = QuantizedKVCache(group_size=c.group_size, bits=c.bits)
            small.keys = tuple(x[..., :n, :] for x in c.keys)
            small.values = tuple(x[..., :n, :] for x in c.values)
        else:
            out.append(c)
            continue
        small.offset = n
        out.append(small)
    return out


def expected_tables(n: int, num_layers: int, config: dict, kv_bits: int | None,
                    group_size: int) -> dict[str, tuple[str, list[int]]]:
    """Tensor name -> (safetensors dtype or "" for any float, shape) of a saved cache."""
    heads = int(config.get("num_key_value_heads") or config["num_attention_heads"])
    width = head_dim(config)
    tables: dict[str, tuple[str, list[int]]] = {}
    for i in range(num_layers):
        if kv_bits:
            for kv in (0, 1):
                tables[f"{i}.{kv}.0"] = ("U32", [1, heads, n, width * kv_bits // 32])
                tables[f"{i}.{kv}.1"] = ("", [1, heads, n, width // group_size])
                tables[f"{i}.{kv}.2"] = ("", [1, heads, n, width // group_size])
            scalars = (2, 3, 4)  # offset, group size, bits
        else:
            tables[f"{i}.0"] = ("", [1, heads, n, width])
            tables[f"{i}.1"] = ("", [1, heads, n, width])
            scalars = (2,)  # offset
        for s in scalars:
            tables[f"{i}.{s}"] = ("", [])
    return tables


def check_tables(table: dict, meta: dict, n: int, num_layers: int, config: dict,
                 ident: dict[str, str]) -> None:
    """Raise ValueError unless a saved cache's header is exactly this model's cache of n tokens."""
    kv_bits = int(ident["kv_bits"]) if ident["kv_bits"] else None
    group_size = int(ident["kv_group_size"])
    want_class = QUANTIZED_CLASS if kv_bits else FLOAT_CLASS
    classes = [meta.get(f"1.{i}") for i in range(num_layers)]
    if f"1.{num_layers}" in meta or any(c != want_class for c in classes):
        raise ValueError(f"expected {num_layers} layers of {want_class}")
    want = expected_tables(n, num_layers, config, kv_bits, group_size)
    if set(table) != set(want):
        raise ValueError("the tensors are not this model's cache layout")
    for name, (dtype, shape) in want.items():
        entry = table[name]
        if list(entry.get("shape", ())) != shape or (dtype and entry.get("dtype") != dtype):
            raise ValueError(f"tensor {name} has shape {entry.get('shape')}, expected {shape}")


def check_loaded(cache: list, n: int, ident: dict[str, str]) -> None:
    """Raise ValueError unless every loaded layer holds n tokens with the expected quantization."""
    kv_bits = int(ident["kv_bits"]) if ident["kv_bits"] else None
    for c in cache:
        if c.offset != n:
            raise ValueError(f"a layer holds {c.offset} tokens, the metadata says {n}")
        if kv_bits and (c.bits != kv_bits or c.group_size != int(ident["kv_group_size"])):
            raise ValueError("a layer's quantization differs from the metadata")
