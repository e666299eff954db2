"""Hub dataset ids: the split is fetched once, converted to JSONL, then read offline."""

from __future__ import annotations

import json

import pytest

from zephyr_local.train.rows import DataError

ROW = {"prompt": "Hi", "prompt_id": "x",
       "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
       "rejected": [{"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Go away."}],
       "messages": [], "score_chosen": 8.0, "score_rejected": 2.0}


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A snapshot dir laid out like ultrafeedback_binarized; counts download calls."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    snap = tmp_path / "snap"
    (snap / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([ROW, ROW]),
                   snap / "data" / "train_prefs-00000-of-00001.parquet")
    calls = []

    def snapshot_download(repo_id, repo_type=None, allow_patterns=None, local_files_only=False):
        calls.append((repo_id, repo_type, local_files_only))
        if local_files_only:
            raise FileNotFoundError("not cached")
        return str(snap)

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    monkeypatch.setenv("ZEPHYR_LOCAL_HOME", str(tmp_path / "home"))
    return calls


def test_hub_split_downloaded_once_then_offline(fake_hub, test_model):
    from zephyr_local.loading import load_tokenizer
    from zephyr_local.train.config import DataConfig
    from zephyr_local.train.data import load_dataset

    tok = load_tokenizer(test_model)
    ds = load_dataset("HuggingFaceH4/ultrafeedback_binarized:train_prefs", "dpo", tok,
                      DataConfig())
    assert len(ds) == 2 and ds.summary.kept == 2
    first = json.loads(open(ds.source).readline())
    assert first["chosen"][1]["content"] == "Hello!"
    n = len(fake_hub)
    again = load_dataset("HuggingFaceH4/ultrafeedback_binarized:train_prefs", "dpo", tok,
                         DataConfig())
    assert len(fake_hub) == n and len(again) == 2  # no hub call the second time


def test_missing_split_names_the_ones_found(fake_hub):
    from zephyr_local.train.hub import dataset_file

    with pytest.raises(DataError, match="no split 'train'.*found: train_prefs"):
        dataset_file("HuggingFaceH4/ultrafeedback_binarized", "train")
