"""Training data: validation messages, Zephyr template ids (HF oracle), masks, truncation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zephyr_local.train.config import DataConfig
from zephyr_local.train.data import collate, load_dataset, tokenize_pref, tokenize_sft
from zephyr_local.train.rows import DataError, DataSummary, PrefRow, SFTRow, read_rows


@pytest.fixture(scope="module")
def tok(test_model):
    from zephyr_local.loading import load_tokenizer

    return load_tokenizer(test_model)


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def hf_ids(hf_tokenizer, messages, generation_prompt):
    """HF's template text, encoded with special tokens (BOS once), as at training time."""
    text = hf_tokenizer.apply_chat_template(messages, tokenize=False,
                                            add_generation_prompt=generation_prompt)
    return list(hf_tokenizer.encode(text))


GOOD = {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "No."}
BAD_PREFS = [
    ("{not json", "invalid JSON"),
    ({"prompt": "Hi", "chosen": "Hello"}, "missing field 'rejected'"),
    ({"chosen": [{"role": "assistant", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "wrong role order"),
    ({"prompt": "Hi", "chosen": "  ", "rejected": "Hello"}, "empty completion"),
    ({"prompt": "Hi", "chosen": "Same", "rejected": "Same"}, "chosen is identical to rejected"),
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]},
     "different prompts"),
]


@pytest.mark.parametrize("row,reason", BAD_PREFS)
def test_strict_names_file_line_and_reason(tmp_path, row, reason):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD, GOOD, row])
    with pytest.raises(DataError) as err:
        read_rows(path, "dpo", DataSummary(), strict=True)
    assert f"{path}:3:" in str(err.value) and reason in str(err.value)


def test_default_skips_and_counts_every_bad_row(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD] + [r for r, _ in BAD_PREFS] + [GOOD])
    summary = DataSummary()
    rows = read_rows(path, "dpo", summary)
    assert len(rows) == 2 and summary.read == 8
    assert sum(summary.skipped.values()) == len(BAD_PREFS)
    assert "6 skipped" not in summary.line() and "skipped (invalid JSON)" in summary.line()


def test_sft_bad_rows(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "q"}]},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
            {"text": "x"},
            {"messages": [{"role": "robot", "content": "q"}]}]
    expected = ["wrong role order", "empty completion", "missing field 'messages'", "unknown role"]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    for line, reason in enumerate(expected, 1):
        write_jsonl(path, [rows[line - 1]])
        with pytest.raises(DataError, match=reason):
            read_rows(path, "sft", DataSummary(), strict=True)


def test_pref_ids_match_hf_template_and_mask_scores_completion_plus_eos(tok, hf_tokenizer):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
              {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Colour?"}]
    row = PrefRow(prompt, "Blue, like the sea.", "I refuse.", "x:1")
    ex = tokenize_pref(tok, row, DataConfig(), DataSummary())
    for seq, reply in ((ex.chosen, row.chosen), (ex.rejected, row.rejected)):
        hf_prompt = hf_ids(hf_tokenizer, prompt, True)
        hf_full = hf_ids(hf_tokenizer, prompt + [{"role": "assistant", "content": reply}], False)
        assert hf_full[-3:] == [2, 28705, 13]  # "</s>\n" ends HF's rendering
        assert seq.ids == hf_full[:-2]  # ours stops at the reply's EOS
        assert seq.spans == [(len(hf_prompt), len(seq.ids))]
        assert seq.ids.count(1) == 1 and seq.ids[0] == 1  # BOS once
        tokens, mask = collate([seq])
        scored = tokens[0, 1:][mask[0] == 1].tolist()
        assert scored == hf_full[len(hf_prompt):-2] and scored[-1] == 2


def test_collate_mask_aligned_with_shifted_targets():
    from zephyr_local.train.data import Sequence

    a, b = Sequence([1, 5, 6, 7, 2], [(3, 5)]), Sequence([1, 9, 2], [(2, 3)])
    tokens, mask = collate([a, b])
    assert tokens.tolist() == [[1, 5, 6, 7, 2], [1, 9, 2, 2, 2]]
    # target j is token j+1: a scores tokens 3,4 (7, EOS); b scores token 2 only, no padding.
    assert mask.tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]


class MergingTokenizer:
    """Encodes the prompt's last token differently once a completion follows it."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):  # eos_token and the rest are the real tokenizer's
        return getattr(self.real, name)

    def encode(self, text):
        ids = list(self.real.encode(text))
        if not text.endswith("<|assistant|>\n") and "<|assistant|>\nX" in text:
            i = len(self.real.encode(text.split("<|assistant|>\nX")[0] + "<|assistant|>\n"))
            ids[i - 1] = 99  # the "\n" merged with the reply's first token
        return ids


def test_prompt_not_prefix_is_handled_and_counted(tok):
    summary = DataSummary()
    row = PrefRow([{"role": "user", "content": "q"}], "X yes", "X no", "x:1")
    plain = tokenize_pref(tok, row, DataConfig(), DataSummary())
    ex = tokenize_pref(MergingTokenizer(tok), row, DataConfig(), summary)
    assert summary.boundary_merges == 2
    # The merged token is scored as completion, never counted as prompt.
    assert ex.chosen.spans[0][0] == plain.chosen.spans[0][0] - 1
    assert ex.chosen.ids[ex.chosen.spans[0][0]] == 99


def test_truncation_same_for_both_and_long_prompts_dropped(tok, tmp_path):
    long_reply = " ".join(["word"] * 80)
    rows = [{"prompt": "short", "chosen": long_reply, "rejected": long_reply + " extra"},
            {"prompt": " ".join(["long"] * 60), "chosen": "a", "rejected": "b"},
            {"prompt": "short", "chosen": "a", "rejected": "b"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    ds = load_dataset(str(path), "dpo", tok, DataConfig(max_length=40, max_prompt_length=30))
    s = ds.summary
    assert (s.read, s.kept, s.dropped_long_prompt, s.truncated) == (3, 2, 1, 1)
    ex = ds.examples[0]
    assert len(ex.chosen.ids) == len(ex.rejected.ids) == 40
    assert ex.chosen.spans[0][0] == ex.rejected.spans[0][0]
    assert "1 dropped (prompt longer than max-prompt-length)" in s.line()


def test_sft_multi_turn_scores_every_assistant_turn(tok, hf_tokenizer):
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "one"},
            {"role": "user", "content": "b"}, {"role": "assistant", "content": "two"}]
    seq = tokenize_sft(tok, SFTRow(msgs, "x:1"), DataConfig(), DataSummary())
    tokens, mask = collate([seq])
    scored = tokens[0, 1:][mask[0] == 1].tolist()
    expected = []
    for i in (1, 3):
        p = hf_ids(hf_tokenizer, msgs[:i], True)
        full = hf_ids(hf_tokenizer, msgs[: i + 1], False)
        expected += full[len(p):-2]  # reply + EOS, without "\n"
    assert scored == expected and scored.count(2) == 2
    assert np.asarray(mask).sum() == seq.n_scored


def test_data_directory_and_missing_sources(tok, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [GOOD])
    assert len(load_dataset(str(tmp_path), "dpo", tok, DataConfig())) == 1
    with pytest.raises(DataError, match="no valid.jsonl"):
        load_dataset(str(tmp_path), "dpo", tok, DataConfig(), split="valid")
    with pytest.raises(DataError, match="not found"):
        load_dataset(str(tmp_path / "nope.jsonl"), "dpo", tok, DataConfig())


@pytest.mark.parametrize("spec,kind,split,rows", [
    ("example:sft", "sft", "train", 34), ("example:sft", "sft", "valid", 6),
    ("example:prefs", "dpo", "train", 42), ("example:prefs", "dpo", "valid", 10)])
def test_bundled_example_data_is_clean(tok, spec, kind, split, rows):
    ds = load_dataset(spec, kind, tok, DataConfig(strict=True), split=split)
    assert len(ds) == rows and ds.summary.read == rows and not ds.summary.boundary_merges
