"""The Zephyr recipe on a real model: SFT teaches the turn end, DPO a style, both kept.

SmolLM2-135M-Instruct (imported from its GGUF) is trained through the `sft`, `dpo` and
`evaluate` commands: SFT on the bundled `example:real-sft` data, then DPO from that
adapter on `example:real-prefs` (chosen answers open with "Happy to help!"). Greedy
replies to prompts that are in no bundled data set are checked at each stage: how many
stop at EOS, and how many open with the style.

DPO pushes every token of the rejected reply down, its EOS included; plain DPO at a
learning rate that moves the opening (1e-3, 10 steps) gave 12/12 styled replies and 0/12
stopping (the phrase repeated to the token limit). The recipe adds the chosen reply's
NLL (`--rpo-alpha 1`), which keeps its EOS likely: 12/12 styled and 12/12 stopping.

The CPU backend trains a float32 import (`import --dequantize`, the same weights as the
4-bit one): MLX's quantized matmul is fast there only one token at a time, while
float32 goes through BLAS.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zephyr_local.train.config import DataConfig
from zephyr_local.train.data import load_dataset

MARK = "Happy to help!"
# Questions in neither data set: what the measured rates are about.
PROBES = [
    "What is the capital of Norway?",
    "How many legs does a dog have?",
    "What is 6 times 4?",
    "Which planet is known for its Great Red Spot?",
    "What do you call a baby horse?",
    "What is the chemical symbol for silver?",
    "Who wrote the novel Moby-Dick?",
    "What colour is the sky on a clear day?",
    "How many sides does a square have?",
    "What is the largest animal in Africa?",
    "What is the capital of Argentina?",
    "Which gas do humans breathe out?",
]
MAX_TOKENS = 32  # the trained answers are one sentence (under 25 tokens)


def _first_difference(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.mark.parametrize("name, at_eos", [("real-prefs", False), ("real-prefs-end", True)])
def test_where_chosen_and_rejected_first_differ(smollm2_model, name, at_eos):
    """Style appended at the end: the first differing token is the rejected reply's EOS.

    DPO's gradient is largest at the first token where the pair differs, so that data
    mostly teaches "do not end here"; a style at the start differs at the reply's
    first token, and both replies end the same way.
    """
    from zephyr_local.loading import load_tokenizer

    tok = load_tokenizer(smollm2_model)
    ds = load_dataset(f"example:{name}", "dpo", tok, DataConfig())
    eos = tok.eos_token_id
    for ex in ds.examples:
        c, r = ex.chosen, ex.rejected
        i = _first_difference(c.ids, r.ids)
        assert c.ids[-1] == r.ids[-1] == eos
        assert (r.ids[i] == eos) is at_eos
        if not at_eos:
            assert i == r.spans[0][0]  # the reply's first token


def float32_import(dst: Path) -> Path:
    """SmolLM2 imported with every tensor dequantized to float32."""
    from conftest import smollm2_gguf_path

    from zephyr_local.gguf_import import import_gguf

    import_gguf(smollm2_gguf_path(), dst, dtype="float32", dequantize=True)
    return dst


def greedy_replies(model_dir: Path, adapter: Path | None = None) -> list[tuple[str, str]]:
    """(text, finish reason) of the greedy reply to each probe, all probes in one batch.

    mlx-lm's BatchGenerator decodes the twelve replies together (greedy, stopping at
    the tokenizer's EOS ids as the engine does), twelve times cheaper on the CPU than
    one after another.
    """
    from mlx_lm.generate import BatchGenerator

    from zephyr_local import loading, template

    loaded = loading.load(model_dir, adapter)
    tok = loaded.tokenizer
    prompts = [template.encode(tok, [{"role": "user", "content": p}]) for p in PROBES]
    stops = sorted(set(tok.eos_token_ids) | {template.eos_id(tok)})
    gen = BatchGenerator(loaded.model, stop_tokens=[[t] for t in stops])
    uids = gen.insert(prompts, [MAX_TOKENS] * len(prompts))
    tokens, finish = {u: [] for u in uids}, {}
    while responses := gen.next_generated():
        for r in responses:
            if r.finish_reason != "stop":
                tokens[r.uid].append(r.token)
            if r.finish_reason is not None:
                finish[r.uid] = r.finish_reason
    gen.close()
    return [(tok.decode(tokens[u]), finish[u]) for u in uids]


def rates(replies: list[tuple[str, str]]) -> dict:
    return {"styled": sum(text.lstrip().startswith(MARK) for text, _ in replies),
            "mentions": sum(MARK in text for text, _ in replies),
            "stopped": sum(reason == "stop" for _, reason in replies),
            "of": len(replies)}


# Settings found to work on this model in a few steps (seed 0): LoRA on the last 8 blocks.
SFT_FLAGS = ["--data", "example:real-sft", "--iters", "12", "--batch-size", "4",
             "--lr", "1e-3", "--lora-layers", "8", "--seed", "0"]
# DPO continues the SFT adapter (its frozen start is the reference); the NLL term on the
# chosen replies (RPO) keeps their EOS likely while the style moves to the front.
DPO_FLAGS = ["--data", "example:real-prefs", "--iters", "10", "--batch-size", "4",
             "--lr", "1e-3", "--rpo-alpha", "1", "--seed", "0"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """Base -> SFT -> DPO through the commands, with the replies and metrics of each stage."""
    from conftest import Cli

    root = tmp_path_factory.mktemp("recipe")
    model = float32_import(root / "models" / "smollm2-f32")
    cli, out = Cli(root / "models"), {"model": model}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZEPHYR_LOCAL_HOME", str(root / "home"))
        out["replies"] = {"base": greedy_replies(model)}
        r = cli("sft", "-m", "smollm2-f32", "--out", str(root / "sft"), *SFT_FLAGS)
        assert r.exit_code == 0, r.output
        out["replies"]["sft"] = greedy_replies(model, root / "sft")
        r = cli("dpo", "-m", "smollm2-f32", "--resume-adapter", str(root / "sft"),
                "--out", str(root / "dpo"), *DPO_FLAGS)
        assert r.exit_code == 0, r.output
        out["replies"]["dpo"] = greedy_replies(model, root / "dpo")
        for tag, adapter in (("eval_base", None), ("eval_sft", root / "sft")):
            args = ["--adapter", str(adapter)] if adapter else []
            e = cli("evaluate", "-m", "smollm2-f32", *args, "--data", "example:real-sft")
            assert e.exit_code == 0, e.output
            out[tag] = json.loads(e.stdout)
    out["rates"] = {stage: rates(r) for stage, r in out["replies"].items()}
    print(json.dumps({"rates": out["rates"], "replies": out["replies"],
                      **{k: out[k] for k in ("eval_base", "eval_sft")}}, indent=1))
    return out


@pytest.mark.timeout(1200)  # the fixture trains; minutes on a loaded 2-core CPU
def test_sft_teaches_the_turn_end_and_the_answers(recipe):
    base, sft = recipe["rates"]["base"], recipe["rates"]["sft"]
    assert sft["stopped"] >= 11 and sft["stopped"] >= base["stopped"], recipe["replies"]["sft"]
    assert sft["mentions"] == 0  # the style is not in the SFT data
    # Held-out answers (real_sft_valid.jsonl): SFT lowers their loss below the base's.
    assert recipe["eval_sft"]["eval_loss"] < 0.8 * recipe["eval_base"]["eval_loss"]


@pytest.mark.timeout(1200)
def test_dpo_teaches_the_style_and_keeps_the_stop(recipe):
    """Measured 12/12 styled and 12/12 stopping; plain DPO (no --rpo-alpha) stopped 0/12."""
    sft, dpo = recipe["rates"]["sft"], recipe["rates"]["dpo"]
    assert sft["styled"] == 0
    assert dpo["styled"] >= 9, recipe["replies"]["dpo"]
    assert dpo["stopped"] >= 10, recipe["replies"]["dpo"]
    # The answer follows the style: the fact SFT gave survives ("6 times 4 is 24.").
    texts = [text for text, _ in recipe["replies"]["dpo"]]
    assert "24" in texts[PROBES.index("What is 6 times 4?")]
    assert "Oslo" in texts[PROBES.index("What is the capital of Norway?")]
