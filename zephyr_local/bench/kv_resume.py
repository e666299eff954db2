"""Reopening a conversation: time to first token from a saved KV cache vs re-prefilling it.

For each length a conversation of real prose (the built-in evaluation text, turn by
turn) is answered once with its KV cache saved (kv_store.py); then the reopened
conversation, with the reply and a new question added, is answered by a fresh
session that loads the saved cache and prefills only the new tokens, and by one
that prefills everything, alternating, in one process. The saved file's page cache
is dropped before each load (fsync + POSIX_FADV_DONTNEED), so the load reads the
disk. Also measured: bytes on disk per token with and without --kv-bits, and the
KL divergence of the next-token distribution with a quantized cache against the
float one over the last tokens of a long conversation.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from zephyr_local.bench.cases import Context
from zephyr_local.bench.common import CaseResult, median, ratio
from zephyr_local.engine import Engine
from zephyr_local.kv_store import KVStore, group_size_for
from zephyr_local.sampling import SamplingOptions

GOAL_AT_2000 = 10.0
QUESTION = "What happens next?"
# Zephyr-7B (32 layers, 8 KV heads of 128) on Metal: float16 keys and values, and the
# prompt speed of a 4-bit 7B there (llama.cpp Q4_0, 512-token prompt; mlx-lm is alike).
ZEPHYR_7B = {"num_hidden_layers": 32, "num_key_value_heads": 8, "head_dim": 128}
METAL_PROMPT_TPS = {"M1": 118, "M2 Max": 671}
SSD_GBPS = (3.0, 5.0)


def long_conversation(tokenizer, n: int) -> list[dict]:
    """User and assistant turns of the evaluation text, about n tokens, ending on a user turn."""
    from zephyr_local.quality import eval_text
    from zephyr_local.template import encode

    words = eval_text().split()
    messages: list[dict] = []
    i, turn = 0, 0
    while True:
        take = words[i % len(words): i % len(words) + 60]
        i += len(take)
        role = "user" if turn % 2 == 0 else "assistant"
        trial = messages + [{"role": role, "content": " ".join(take)}]
        if role == "user" and len(encode(tokenizer, trial)) > n:
            return messages + [{"role": "user", "content": QUESTION}] if messages else trial
        messages, turn = trial, turn + 1


def _drop_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _reply(session, ids: list[int], max_tokens: int):
    opts = SamplingOptions(temperature=0.0, max_tokens=max_tokens)
    tokens, last = [], None
    for last in session.reply_to_ids(ids, opts):
        tokens += [last.token] if last.token is not None else []
    return tokens, last.stats


def reopen_once(engine: Engine, n: int, repeats: int, kv_bits: int | None = None) -> dict:
    """TTFT of a reopened n-token conversation: saved cache vs re-prefill (medians)."""
    from zephyr_local.template import encode

    tok = engine.tokenizer
    messages = long_conversation(tok, n)
    ids = encode(tok, messages)
    with tempfile.TemporaryDirectory() as tmp:
        store = KVStore(Path(tmp) / "kv", 1 << 40)
        first = engine.session(context_budget=len(ids) + 64, kv_bits=kv_bits)
        first.keep_cache(store, "conv")
        reply, _ = _reply(first, ids, 8)
        reopened = messages + [{"role": "assistant", "content": tok.decode(reply)},
                               {"role": "user", "content": QUESTION}]
        ids2 = encode(tok, reopened)
        path = store.path("conv")
        size, held = path.stat().st_size, first.cached_tokens
        pristine = Path(tmp) / "pristine.safetensors"
        shutil.copyfile(path, pristine)
        runs = {"saved": [], "prefill": []}
        for i in range(repeats):
            for kind in (("saved", "prefill") if i % 2 == 0 else ("prefill", "saved")):
                session = engine.session(context_budget=len(ids2) + 16, kv_bits=kv_bits)
                if kind == "saved":
                    shutil.copyfile(pristine, path)
                    _drop_page_cache(path)
                    session.keep_cache(store, "conv")
                runs[kind].append(_reply(session, ids2, 4))
    saved, prefill = runs["saved"], runs["prefill"]
    return {
        "prompt_tokens": len(ids2), "saved_tokens": held, "file_bytes": size,
        "bytes_per_token": round(size / held, 1),
        "loaded_tokens": saved[0][1].loaded_tokens,
        "prefilled_from_saved": saved[0][1].prefilled_tokens,
        "ttft_saved_s": median(s.ttft_s for _, s in saved),
        "ttft_prefill_s": median(s.ttft_s for _, s in prefill),
        "identical_greedy_tokens": all(t == prefill[0][0] for t, _ in saved + prefill),
    }


def next_token_kl(engine: Engine, ids: list[int], kv_bits=(8, 4), positions: int = 64) -> dict:
    """KL(float || quantized) of the next-token distribution at the last `positions` tokens,
    for each of `kv_bits`.

    Every cache takes the same steps: the conversation but its tail in 512-token chunks,
    then the tail in one pass (each tail token attends to its own quantized keys, as in
    decoding).
    """
    import mlx.core as mx

    from zephyr_local.kv_layout import new_cache

    model = engine.loaded.model
    body, tail = ids[:-positions], ids[-positions:]

    def logprobs(bits):
        cache = new_cache(model, bits, group_size_for(engine.loaded.config, bits))
        for start in range(0, len(body), 512):
            model(mx.array(body[start:start + 512])[None], cache=cache)
            mx.eval([c.state for c in cache])
        logits = model(mx.array(tail)[None], cache=cache)[0].astype(mx.float32)
        return logits - mx.logsumexp(logits, axis=-1, keepdims=True)

    def run():
        p = logprobs(None)
        out = {}
        for bits in kv_bits:
            q = logprobs(bits)
            kl = (mx.exp(p) * (p - q)).sum(axis=-1)
            top1 = (p.argmax(axis=-1) == q.argmax(axis=-1)).astype(mx.float32).mean()
            out[bits] = {"mean_kl": kl.mean().item(), "max_kl": kl.max().item(),
                         "top1_agreement": top1.item(), "context_tokens": len(ids),
                         "positions": positions}
        return out

    return engine.worker.call(run)


def bytes_per_token_formula(config: dict, kv_bits: int | None, dtype_bytes: int = 2) -> int:
    """Keys and values of one token in all layers: float, or packed + scales + biases."""
    layers, heads = config["num_hidden_layers"], config["num_key_value_heads"]
    dim = config["head_dim"]
    if not kv_bits:
        return 2 * layers * heads * dim * dtype_bytes
    group = group_size_for(config, kv_bits)
    return 2 * layers * heads * (dim * kv_bits // 8 + 2 * (dim // group) * dtype_bytes)


def metal_estimate(tokens: int = 2000) -> dict:
    """Zephyr-7B on Metal: reading the saved cache from an SSD vs prefilling the tokens."""
    out = {}
    for bits in (None, 8):
        per_token = bytes_per_token_formula(ZEPHYR_7B, bits)
        label = f"kv{bits}" if bits else "float16"
        out[label] = {"bytes_per_token": per_token,
                      **{f"read_s_at_{g:g}_GBps": round(per_token * tokens / (g * 1e9), 4)
                         for g in SSD_GBPS}}
    out["prefill_s"] = {chip: round(tokens / tps, 2) for chip, tps in METAL_PROMPT_TPS.items()}
    out["tokens"] = tokens
    return out


def resume_case(engine: Engine, *, lengths=(500, 2000, 4000), repeats: int = 2,
                kl_tokens: int = 2000) -> CaseResult:
    """TTFT on reopening conversations, bytes per token, and the KL cost of --kv-bits."""
    from zephyr_local.template import encode

    result = CaseResult("resume")
    _reply(engine.session(), encode(engine.tokenizer, [{"role": "user", "content": "Hi"}]), 2)
    for n in lengths:
        r = reopen_once(engine, n, repeats)
        result.details[f"{n} tokens"] = r
        result.ratios.append(ratio(
            "resume", f"TTFT reopening a {r['prompt_tokens']}-token conversation "
            f"(identical: {r['identical_greedy_tokens']})", r["ttft_saved_s"],
            r["ttft_prefill_s"], "re-prefill", higher_is_better=False,
            goal=GOAL_AT_2000 if n == 2000 else None, unit="s"))
    conversation = encode(engine.tokenizer, long_conversation(engine.tokenizer, kl_tokens))
    kl = next_token_kl(engine, conversation, (8, 4))
    for bits in (8, 4):
        q = reopen_once(engine, lengths[0], 1, kv_bits=bits)
        result.details[f"kv_bits {bits}"] = {
            "bytes_per_token": q["bytes_per_token"],
            "vs_float": round(q["bytes_per_token"] / result.details[f"{lengths[0]} tokens"]
                              ["bytes_per_token"], 3),
            "identical_greedy_tokens": q["identical_greedy_tokens"], **kl[bits]}
    result.details["metal_7b_estimate"] = metal_estimate()
    return result


def run_resume(ctx: Context) -> CaseResult:
    """On the CPU a quantized model prefills through a slow path, which would flatter the
    saved cache: this case runs a float32 copy of a quantized model (as the lookup case)."""
    from zephyr_local.bench.lookup import float32_engine

    s = ctx.settings
    with float32_engine(ctx.engine) as engine:
        result = resume_case(engine, lengths=s["resume_lengths"], repeats=s["resume_repeats"],
                             kl_tokens=s["kl_tokens"])
    result.details["model"] = Path(ctx.model).name
    return result
