"""Bad inputs and faults, one table: command, input, exit code, a fragment of the message.

Every case runs the real command in-process (click's CliRunner) and must end with
the expected exit code and one short `Error: ...` line naming the problem, or
succeed where success is right (a bad row skipped and counted). No traceback, ever.
Faults are real where the machine allows: a directory this user cannot write, a
full tmpfs, a dead process's temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import assert_exit, assert_one_line_error, invoke

PREFS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome"},
    {"prompt": "Colour of the sky?", "chosen": "Blue", "rejected": "Green"},
    {"prompt": "Opposite of hot?", "chosen": "Cold", "rejected": "Warm"},
]
SFT = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in PREFS]


@dataclass
class Case:
    """One bad input or fault. `{tmp}`, `{model}`, `{adapter}`, `{ro}`, `{full}` in
    `args`, `fragment` and `env` are filled in per test."""

    id: str
    args: list[str]
    code: int
    fragment: str
    setup: Callable | None = None  # setup(ctx: Ctx) before the command
    check: Callable | None = None  # check(ctx, result) after it
    input: bytes | str | None = None
    env: dict = field(default_factory=dict)
    store: bool = True  # pass --models-dir <the test store>
    needs: tuple = ()  # "ro" / "full": skipped where that fault cannot be made


@dataclass
class Ctx:
    tmp: Path
    model: Path
    adapter: Path
    monkeypatch: pytest.MonkeyPatch
    ro: Path | None = None
    full: Path | None = None

    def fill(self, text: str) -> str:
        return text.format(tmp=self.tmp, model=self.model, adapter=self.adapter,
                           ro=self.ro, full=self.full)


# -- setups ----------------------------------------------------------------------


def _jsonl(path: Path, rows, prefix: str = "") -> None:
    path.write_text(prefix + "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def data_files(c: Ctx) -> None:
    _jsonl(c.tmp / "prefs.jsonl", PREFS)
    _jsonl(c.tmp / "sft.jsonl", SFT)


def surrogate_rows(c: Ctx) -> None:
    _jsonl(c.tmp / "sft.jsonl", SFT + [{"prompt": "bad \ud800 text", "completion": "x"}])
    bad = {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\udfff"}],
           "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}
    _jsonl(c.tmp / "prefs.jsonl", PREFS + [bad])


def bom_rows(c: Ctx) -> None:
    _jsonl(c.tmp / "sft.jsonl", SFT, prefix="\ufeff")


def huge_row(c: Ctx) -> None:
    _jsonl(c.tmp / "sft.jsonl", SFT + [{"prompt": "long " * 1_000_000, "completion": "x"}])


def bad_json_rows(c: Ctx) -> None:
    (c.tmp / "sft.jsonl").write_text('{"prompt": "unterminated\n')
    _jsonl(c.tmp / "prefs.jsonl", [{"chosen": 5, "rejected": [{"role": "user", "content": "q"}]}])
    (c.tmp / "m.json").write_text(json.dumps({"messages": 5}))


def killed_before_first_checkpoint(c: Ctx) -> None:
    """What a kill -9 at step 3 leaves: the run config and three steps of metrics."""
    from zephyr_local.train.config import TrainConfig

    data_files(c)
    run = c.tmp / "run0"
    run.mkdir()
    cfg = TrainConfig(kind="dpo", model=str(c.model), data=str(c.tmp / "prefs.jsonl"),
                      out=str(run), iters=2, batch_size=2)
    (run / "run_config.json").write_text(json.dumps(cfg.to_dict()))
    _jsonl(run / "metrics.jsonl", [{"step": i, "loss": 0.69} for i in (1, 2, 3)])


def model_with_config(**changes) -> Callable:
    """A copy of the test model whose config.json has `changes` (None deletes a key)."""

    def setup(c: Ctx) -> None:
        dst = c.tmp / "m"
        dst.mkdir()
        for f in c.model.iterdir():
            (dst / f.name).symlink_to(f) if f.suffix == ".safetensors" else shutil.copy(f, dst)
        config = json.loads((dst / "config.json").read_text())
        for key, value in changes.items():
            config.pop(key) if value is None else config.__setitem__(key, value)
        (dst / "config.json").write_text(json.dumps(config))

    return setup


def adapter_with_config(edit: Callable[[dict], None]) -> Callable:
    def setup(c: Ctx) -> None:
        dst = c.tmp / "a"
        shutil.copytree(c.adapter, dst)
        config = json.loads((dst / "adapter_config.json").read_text())
        edit(config)
        (dst / "adapter_config.json").write_text(json.dumps(config))

    return setup


def dora_adapter(c: Ctx) -> None:
    """A real DoRA adapter (mlx-lm's DoRA layers, magnitudes included)."""
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from zephyr_local import loading
    from zephyr_local.train.lora import save_adapter

    model = loading.load(c.model).model
    model.freeze()
    params = {"rank": 4, "scale": 1.0, "dropout": 0.0}
    linear_to_lora_layers(model, len(model.layers), params, use_dora=True)
    assert any(k.endswith(".m") for k, _ in tree_flatten(model.trainable_parameters()))
    save_adapter(c.tmp / "a", model, {"fine_tune_type": "dora", "num_layers": len(model.layers),
                                      "lora_parameters": params})


def home_is_a_file(c: Ctx) -> None:
    (c.tmp / "home").write_text("not a directory")


def non_utf8_messages(c: Ctx) -> None:
    (c.tmp / "m.json").write_bytes(b'[{"role": "user", "content": "caf\xe9"}]')


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def stale_temp_dirs(c: Ctx) -> None:
    """A kill -9 during create/quantize/fuse: its hidden build directory is left behind."""
    stale = c.tmp / f".tm.tmp-{dead_pid()}-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    live = c.tmp / f".tm.tmp-{os.getpid()}-def456"  # a writer still running: kept
    live.mkdir()


def check_stale_removed(c: Ctx, result) -> None:
    names = sorted(p.name for p in c.tmp.iterdir() if p.name.startswith(".tm.tmp-"))
    assert names == [f".tm.tmp-{os.getpid()}-def456"], names


def check_no_out_dir(c: Ctx, result) -> None:
    assert not (c.tmp / "run").exists()


def metrics_symlink(c: Ctx) -> None:
    data_files(c)
    (c.tmp / "outside.txt").write_text("not yours\n")
    (c.tmp / "run").mkdir()
    (c.tmp / "run" / "metrics.jsonl").symlink_to(c.tmp / "outside.txt")


def check_outside_untouched(c: Ctx, result) -> None:
    assert (c.tmp / "outside.txt").read_text() == "not yours\n"
    metrics = c.tmp / "run" / "metrics.jsonl"
    assert not metrics.is_symlink() and json.loads(metrics.read_text().splitlines()[0])["step"]


def unusable_models(c: Ctx) -> None:
    store = c.tmp / "store"
    store.mkdir()
    (store / "zephyr-test").symlink_to(c.model)
    gpt2 = store / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (gpt2 / "model.safetensors").symlink_to(c.model / "model.safetensors")
    pickle = store / "pickled"
    pickle.mkdir()
    shutil.copy(c.model / "config.json", pickle)
    (pickle / "pytorch_model.bin").write_bytes(b"\x80\x02")


def check_only_usable_listed(c: Ctx, result) -> None:
    assert "zephyr-test" in result.stdout
    assert "gpt2" not in result.stdout and "pickled" not in result.stdout
    assert "pickled" in result.stderr


def estimate_too_low(c: Ctx) -> None:
    """The disk fills during the write (another program, or a wrong estimate)."""
    import zephyr_local.quantize as q

    c.monkeypatch.setattr(q, "DISK_MARGIN_BYTES", 0)
    c.monkeypatch.setattr(q, "_estimate_bytes", lambda *a: 0)


GEN = ["generate", "-m", "{model}", "--max-tokens", "2", "--temp", "0"]
DPO = ["dpo", "-m", "{model}", "--data", "{tmp}/prefs.jsonl", "--iters", "1", "--batch-size", "2"]
EVAL = ["evaluate", "-m", "{model}", "--data"]

CASES = [
    # 3. a training run killed before its first checkpoint
    Case("dpo-again-after-kill", [*DPO[:-4], "--out", "{tmp}/run0", "--iters", "2",
                                  "--batch-size", "2"], 0, "Wrote adapter",
         setup=killed_before_first_checkpoint),
    Case("dpo-resume-after-kill", ["dpo", "--out", "{tmp}/run0", "--resume"], 0,
         "Wrote adapter", setup=killed_before_first_checkpoint),
    # 4. one bad row
    Case("sft-row-lone-surrogate", [*EVAL, "{tmp}/sft.jsonl"], 0,
         '"text is not valid Unicode": 1', setup=surrogate_rows),
    Case("dpo-row-lone-surrogate", [*EVAL, "{tmp}/prefs.jsonl"], 0,
         '"text is not valid Unicode": 1', setup=surrogate_rows),
    Case("train-row-lone-surrogate", [*DPO, "--out", "{tmp}/run"], 0,
         "1 skipped (text is not valid Unicode)", setup=surrogate_rows),
    Case("utf8-bom-keeps-first-row", [*EVAL, "{tmp}/sft.jsonl"], 0, '"kept": 4',
         setup=bom_rows),
    Case("huge-row-refused-before-tokenizing", [*EVAL, "{tmp}/sft.jsonl"], 0,
         '"row too long": 1', setup=huge_row),
    Case("json-error-message", ["sft", "-m", "{model}", "--data", "{tmp}/sft.jsonl", "--out",
                                "{tmp}/run", "--strict"], 2,
         "invalid JSON (Unterminated string starting at column", setup=bad_json_rows),
    # 5. operating-system errors
    Case("quantize-read-only-out", ["quantize", "{model}", "--group-size", "32", "--no-eval",
                                    "--out", "{ro}/q"], 1, "{ro}: cannot write", needs=("ro",)),
    Case("dpo-read-only-out", [*DPO, "--out", "{ro}/run"], 1, "{ro}/run: cannot write",
         setup=data_files, needs=("ro",)),
    Case("fuse-read-only-out", ["fuse", "-m", "{model}", "--adapter", "{adapter}", "--out",
                                "{ro}/m"], 1, "{ro}: cannot write", needs=("ro",)),
    Case("create-test-model-read-only", ["create-test-model", "{ro}/m"], 1,
         "{ro}: cannot write", needs=("ro",)),
    Case("out-under-a-file", [*DPO, "--out", "{tmp}/prefs.jsonl/run"], 1,
         "prefs.jsonl is not a directory", setup=data_files),
    Case("home-is-a-file-models", ["models"], 1, "ZEPHYR_LOCAL_HOME={tmp}/home: not a directory",
         setup=home_is_a_file, env={"ZEPHYR_LOCAL_HOME": "{tmp}/home"}, store=False),
    Case("home-is-a-file-chat", ["chat", "-m", "{model}"], 1, "ZEPHYR_LOCAL_HOME",
         setup=home_is_a_file, env={"ZEPHYR_LOCAL_HOME": "{tmp}/home"}, store=False),
    Case("quantize-disk-fills", ["quantize", "{model}", "--group-size", "32", "--no-eval",
                                 "--out", "{full}/q"], 1,
         "{full}/q: cannot write (no space left on the device)",
         setup=estimate_too_low, needs=("full",)),
    Case("checkpoint-disk-full", [*DPO[:-4], "--out", "{full}/run", "--iters", "2",
                                  "--batch-size", "2", "--save-every", "1"], 1,
         "cannot write (no space left on the device)", setup=data_files, needs=("full",)),
    # 6. broken config.json / adapter_config.json
    Case("config-missing-hidden-size", [*GEN, "-m", "{tmp}/m", "-p", "hi"], 2,
         "config.json: missing key 'hidden_size'", setup=model_with_config(hidden_size=None)),
    Case("config-string-size", [*GEN, "-m", "{tmp}/m", "-p", "hi"], 2,
         "hidden_size is '128'", setup=model_with_config(hidden_size="128")),
    Case("config-null-eps", [*GEN, "-m", "{tmp}/m", "-p", "hi"], 2, "missing key 'rms_norm_eps'",
         setup=model_with_config(rms_norm_eps=None)),
    Case("config-zero-heads", [*GEN, "-m", "{tmp}/m", "-p", "hi"], 2,
         "num_attention_heads is 0", setup=model_with_config(num_attention_heads=0)),
    Case("config-heads-do-not-divide", [*GEN, "-m", "{tmp}/m", "-p", "hi"], 2,
         "not a multiple of num_key_value_heads",
         setup=model_with_config(num_key_value_heads=3)),
    Case("adapter-no-lora-parameters", [*GEN, "--adapter", "{tmp}/a", "-p", "hi"], 2,
         "adapter_config.json: missing key 'lora_parameters'",
         setup=adapter_with_config(lambda c: c.pop("lora_parameters"))),
    Case("adapter-dora-over-lora-weights", [*GEN, "--adapter", "{tmp}/a", "-p", "hi"], 2,
         "fine_tune_type is 'dora' but the weights are LoRA weights",
         setup=adapter_with_config(lambda c: c.update(fine_tune_type="dora"))),
    Case("adapter-string-layers", [*GEN, "--adapter", "{tmp}/a", "-p", "hi"], 2,
         "num_layers is '4'", setup=adapter_with_config(lambda c: c.update(num_layers="4"))),
    Case("fuse-dora-adapter", ["fuse", "-m", "{model}", "--adapter", "{tmp}/a", "--out",
                               "{tmp}/fused"], 0, "Wrote", setup=dora_adapter),
    Case("adapter-full-type", [*GEN, "--adapter", "{tmp}/a", "-p", "hi"], 2,
         "fine_tune_type is 'full': expected one of lora, dora",
         setup=adapter_with_config(lambda c: c.update(fine_tune_type="full"))),
    # 7. NaN and infinity in numeric flags
    Case("dpo-lr-nan", [*DPO, "--out", "{tmp}/run", "--lr", "nan"], 2, "'nan' is not a finite",
         setup=data_files),
    Case("dpo-beta-nan", [*DPO, "--out", "{tmp}/run", "--beta", "nan"], 2, "not a finite",
         setup=data_files),
    Case("sft-lora-alpha-inf", ["sft", "-m", "{model}", "--data", "{tmp}/sft.jsonl", "--out",
                                "{tmp}/run", "--iters", "1", "--lora-alpha", "inf"], 2,
         "'inf' is not a finite", setup=data_files),
    Case("evaluate-beta-nan", [*EVAL, "{tmp}/prefs.jsonl", "--beta", "nan"], 2, "not a finite",
         setup=data_files),
    Case("generate-temp-inf", [*GEN, "-p", "hi", "--temp", "inf"], 2, "not a finite"),
    # 8. input decoding and seeds
    Case("messages-not-utf8", [*GEN, "--messages", "{tmp}/m.json"], 1,
         "m.json: not UTF-8 text (byte 0xe9", setup=non_utf8_messages),
    Case("stdin-not-utf8", [*GEN, "-"], 1, "stdin: not UTF-8 text", input=b"caf\xe9\n"),
    Case("prompt-lone-surrogate", [*GEN, "-p", "bad \udcff"], 1,
         "the prompt: not valid Unicode (lone surrogate U+DCFF"),
    Case("messages-lone-surrogate", [*GEN, "--messages", "{tmp}/s.json"], 2,
         "message 0: content is not valid Unicode",
         setup=lambda c: (c.tmp / "s.json").write_text('[{"role": "user", "content": "\\ud800"}]')),
    Case("tokenize-text-surrogate", ["tokenize", "-m", "{model}", "--text", "\udcff"], 1,
         "--text: not valid Unicode"),
    Case("seed-negative", [*GEN, "-p", "hi", "--seed", "-1"], 2, "'--seed': -1 is not in"),
    Case("seed-too-big", [*GEN, "-p", "hi", "--seed", str(2**70)], 2, "'--seed'"),
    Case("dpo-seed-too-big", [*DPO, "--out", "{tmp}/run", "--seed", str(2**64)], 2, "'--seed'"),
    # 9. leftovers
    Case("stale-temp-dir-removed", ["create-test-model", "{tmp}/tm"], 0, "Wrote",
         setup=stale_temp_dirs, check=check_stale_removed),
    Case("failed-run-leaves-no-out-dir", ["dpo", "-m", "{model}", "--data", "{tmp}/sft.jsonl",
                                          "--out", "{tmp}/run"], 2, "no usable dpo rows",
         setup=data_files, check=check_no_out_dir),
    Case("metrics-symlink-not-followed", [*DPO, "--out", "{tmp}/run"], 0, "Wrote adapter",
         setup=metrics_symlink, check=check_outside_untouched),
    # controls: refusals that already held up, kept as they were
    Case("control-top-p-zero", [*GEN, "-p", "hi", "--top-p", "0"], 2, "'--top-p'"),
    Case("control-messages-bad-json", [*GEN, "--messages", "{tmp}/j.json"], 1,
         "j.json: invalid JSON", setup=lambda c: (c.tmp / "j.json").write_text("[{")),
    Case("control-pickle-refused", [*GEN, "-m", "{tmp}/store/pickled", "-p", "hi"], 2,
         "pickle checkpoints are refused", setup=unusable_models),
    # 10. messages
    Case("chosen-not-a-list", [*EVAL, "{tmp}/prefs.jsonl", "--strict"], 2,
         "bad chosen conversation: expected a list of messages, not int", setup=bad_json_rows),
    Case("messages-not-a-list", [*GEN, "--messages", "{tmp}/m.json"], 2,
         "expected a list of messages, not int", setup=bad_json_rows),
    Case("tried-path-once", [*GEN, "-m", "/no/such/model", "-p", "hi"], 2,
         "(tried /no/such/model):"),
    Case("models-skips-unusable", ["--models-dir", "{tmp}/store", "models"], 0,
         "not usable: gpt2", setup=unusable_models, check=check_only_usable_listed, store=False),
]


# -- fixtures for faults the machine may not allow ---------------------------------


@pytest.fixture(scope="session")
def adapter(tmp_path_factory, test_model) -> Path:
    """A LoRA adapter for the test model (B = 0, so the model is unchanged)."""
    from zephyr_local import loading
    from zephyr_local.train.config import LoRAConfig
    from zephyr_local.train.lora import adapter_config, apply_lora, save_adapter

    out = tmp_path_factory.mktemp("adapter")
    model = loading.load(test_model).model
    cfg = LoRAConfig(rank=4, dropout=0.0)
    apply_lora(model, cfg)
    save_adapter(out, model, adapter_config(cfg, len(model.layers)))
    return out


def _run_root(*cmd: str) -> bool:
    return os.geteuid() == 0 and shutil.which(cmd[0]) is not None and \
        subprocess.run(cmd, capture_output=True, check=False).returncode == 0


@pytest.fixture
def ro_dir(tmp_path):
    """A directory this process cannot create files in (chmod, or chattr +i for root)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    immutable = os.access(ro, os.W_OK) and _run_root("chattr", "+i", str(ro))
    if os.access(ro, os.W_OK) and not immutable:
        pytest.skip("no way to make a read-only directory here")
    yield ro
    if immutable:
        subprocess.run(["chattr", "-i", str(ro)], check=True)
    ro.chmod(0o755)


@pytest.fixture
def full_dir(tmp_path):
    """A 1 MiB tmpfs: room for a run's config and metrics, not for a checkpoint."""
    full = tmp_path / "full"
    full.mkdir()
    if not _run_root("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield full
    subprocess.run(["umount", str(full)], check=True)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, request, tmp_path, model_store, test_model, adapter, monkeypatch):
    ctx = Ctx(tmp_path, test_model, adapter, monkeypatch)
    if "ro" in case.needs:
        ctx.ro = request.getfixturevalue("ro_dir")
    if "full" in case.needs:
        ctx.full = request.getfixturevalue("full_dir")
    monkeypatch.setenv("ZEPHYR_LOCAL_HOME", str(tmp_path / "zl-home"))  # caches stay here
    if case.setup:
        case.setup(ctx)
    args = [ctx.fill(a) for a in case.args]
    env = {k: ctx.fill(v) for k, v in case.env.items()}
    result = invoke(model_store if case.store else None, *args, input=case.input, env=env)
    assert_clean(result, case.code, ctx.fill(case.fragment))
    if case.check:
        case.check(ctx, result)


def assert_clean(result, code: int, fragment: str) -> None:
    """The exit code; no traceback; on failure one short `Error:` line holding `fragment`."""
    if code != 0:
        assert_one_line_error(result, code, fragment)
        return
    output = assert_exit(result, 0)
    assert fragment in output, output[-2000:]
