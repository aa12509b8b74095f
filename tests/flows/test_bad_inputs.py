"""Issue 17: every bad input fails before any work, as one line naming the field or file,
with exit status 2 — for ``bl grid``, ``bl train``, ``bl scaling``, ``bl eval`` and
``bl plan``. The CLI runs in-process (fast); one case runs ``bl grid`` as a subprocess to
show that no Prefect server starts and nothing is written."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

# tests/conftest.py's model helpers (a plain `from conftest import` here would find
# tests/flows/conftest.py, depending on collection order).
_spec = importlib.util.spec_from_file_location(
    "_root_conftest", Path(__file__).parents[1] / "conftest.py"
)
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
make_checkpoint, make_tokenizer = _helpers.make_checkpoint, _helpers.make_tokenizer


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Good and damaged inputs, made once."""
    root = tmp_path_factory.mktemp("inputs")
    good = make_checkpoint("llama", root / "good", seed=0)
    paths = {"good": good}

    def variant(name: str) -> Path:
        path = root / name
        shutil.copytree(good, path)
        return path

    truncated = variant("truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    paths["truncated"] = truncated
    no_config = variant("no-config")
    (no_config / "config.json").unlink()
    paths["no_config"] = no_config
    bad_config = variant("bad-config")
    (bad_config / "config.json").write_text("{not json")
    paths["bad_config"] = bad_config
    only_bin = variant("only-bin")
    (only_bin / "model.safetensors").rename(only_bin / "pytorch_model.bin")
    paths["only_bin"] = only_bin
    other_vocab = variant("other-vocab")
    for f in other_vocab.glob("tokenizer*"):
        f.unlink()
    make_tokenizer(vocab_size=280).save_pretrained(other_vocab)
    paths["other_vocab"] = other_vocab
    paths["a_file"] = root / "a-file.txt"
    paths["a_file"].write_text("not a directory\n")
    icl = root / "icl-partial"
    icl.mkdir()
    for task in ("capitalize", "next_item", "word_length"):
        (icl / f"{task}.json").write_text('[{"input": "a", "output": "A"}]')
    paths["icl_partial"] = icl
    empty = root / "empty-corpus"
    empty.mkdir()
    paths["empty_dir"] = empty
    for name, config in {
        "unknown_type": {"model_type": "nosuch-arch"},
        "odd_head": {"model_type": "llama", "hidden_size": 36, "num_attention_heads": 4},
        "indivisible": {"model_type": "llama", "hidden_size": 30, "num_attention_heads": 4},
    }.items():
        paths[name] = root / f"{name}.json"
        paths[name].write_text(json.dumps(config))
    paths["not_json"] = root / "not-json.json"
    paths["not_json"].write_text("{")
    return paths


def _teachers(*paths: str) -> str:
    rungs = ", ".join(f"{{name: t{i}, path: '{p}'}}" for i, p in enumerate(paths))
    return f"teachers=[{rungs}]"


# (command, arguments with @file@ placeholders, substring the error line must contain)
CASES = [
    ("grid", ["--set", "student.num_layers=3"], "student.num_layers=3"),
    ("grid", ["--set", "packing.val_tokens=10"], "packing.val_tokens=10"),
    ("grid", ["--set", "packing.seq_len=128"], "packing.seq_len=128"),
    ("grid", ["--set", _teachers("/nonexistent/teacher")], "teachers[0].path='/nonexistent"),
    ("grid", ["--set", _teachers("nobody/no-such-model")], "teachers[0].path='nobody/"),
    ("grid", ["--set", _teachers("@good@", "@other_vocab@")], "teachers[1].path="),
    ("grid", ["--set", _teachers("@truncated@")], "model.safetensors"),
    ("grid", ["--set", _teachers("@no_config@")], "teachers[0].path="),
    ("grid", ["--set", _teachers("@bad_config@")], "config.json"),
    ("grid", ["--set", _teachers("@only_bin@")], ".bin"),
    ("grid", ["--set", _teachers("@a_file@")], "teachers[0].path="),
    ("grid", ["--set", "icl.data_dir=/nonexistent"], "icl.data_dir='/nonexistent'"),
    ("grid", ["--set", "icl.data_dir=@icl_partial@"], "icl.data_dir="),
    ("grid", ["--set", "icl.tasks=null", "--set", "icl.data_dir=@icl_partial@"], "of the 19"),
    ("grid", ["--set", "icl.tasks=[no_such_task]"], "no_such_task"),
    ("grid", ["--set", "grid.budgets=[]"], "grid.budgets=[]"),
    ("grid", ["--set", "grid.methods=[]"], "grid.methods=[]"),
    ("grid", ["--set", "pipeline.seeds=[]"], "pipeline.seeds=[]"),
    ("grid", ["--teachers", "nosuch"], "'nosuch'"),
    ("grid", ["--budgets", "1.5"], "1.5"),
    ("grid", ["--set", "corpus.source=files", "--set", "corpus.path=/nonexistent"], "corpus.path="),
    ("grid", ["--set", "corpus.source=jsonl", "--set", "corpus.path=@empty_dir@"], "corpus.path="),
    ("grid", ["--set", "tokenizer.path=/nonexistent/tok"], "tokenizer.path='/nonexistent"),
    ("grid", ["--set", "budget.final_fraction=1.3"], "budget.final_fraction=1.3"),
    ("grid", ["--set", "lora.rnk=4"], "lora.rnk"),
    ("grid", ["--set", "compression.tau_drop=0.9"], "tau_drop=0.9"),
    ("grid", ["--set", "no-equals-sign"], "no-equals-sign"),
    ("grid", ["--config", "no-such-preset"], "no-such-preset"),
    ("grid", ["--out", "@a_file@/out"], "--out="),
    ("scaling", ["--set", "packing.val_tokens=10"], "packing.val_tokens=10"),
    ("train", ["--set", "student.num_layers=3"], "student.num_layers=3"),
    ("train", ["--teacher", "nosuch"], "'nosuch'"),
    ("train", ["--set", "packing.val_tokens=10"], "packing.val_tokens=10"),
    ("train", ["--set", _teachers("@truncated@")], "model.safetensors"),
    ("train", ["--set", "icl.data_dir=/nonexistent"], "icl.data_dir="),
    ("eval", ["/nonexistent/model", "--icl"], "MODEL: model directory '/nonexistent/model'"),
    ("eval", ["@a_file@", "--icl"], "is a file"),
    ("eval", ["@truncated@", "--icl"], "model.safetensors"),
    ("eval", ["@good@", "--ppl-data", "/nonexistent/packed"], "--ppl-data="),
    ("eval", ["@good@", "--icl", "--fv-dir", "/nonexistent"], "icl.data_dir="),
    ("eval", ["@good@", "--icl", "--out", "@empty_dir@"], "--out="),
    ("eval", ["@good@", "--icl", "--lm-eval-include", "/nonexistent/tasks"], "--lm-eval-include="),
    ("plan", ["--model-config", "@unknown_type@"], "model_type='nosuch-arch'"),
    ("plan", ["--model-config", "@odd_head@"], "head dimension 9"),
    ("plan", ["--model-config", "@indivisible@"], "not divisible"),
    ("plan", ["--model-config", "@not_json@"], "not-json.json"),
    ("plan", ["--model-config", "/nonexistent/config.json"], "/nonexistent/config.json"),
    ("plan", ["--model-config", "@good@", "--student-layers", "9"], "student.num_layers=9"),
]


def _argv(command: str, args: list[str], files: dict[str, Path], out: Path) -> list[str]:
    for name, path in files.items():
        args = [a.replace(f"@{name}@", str(path)) for a in args]
    if command in ("grid", "scaling", "train"):
        config = [] if "--config" in args else ["--config", "micro"]
        outdir = [] if "--out" in args else ["--out", str(out)]
        return [command, *config, *outdir, *args]
    return [command, *args]


@pytest.mark.parametrize(("command", "args", "expected"), CASES)
def test_bad_input_fails_at_once(command, args, expected, files, tmp_path, monkeypatch, capsys):
    import flows.cli

    def no_server(*_):
        raise AssertionError("the Prefect environment was set up: validation came too late")

    monkeypatch.setattr(flows.cli, "_prefect_environment", no_server)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    start = time.perf_counter()
    rc = flows.cli.main(_argv(command, args, files, out))
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert rc == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert expected in errors[0], errors[0]
    assert not out.exists() and not (tmp_path / "outputs").exists()  # nothing written
    assert seconds < 10, f"@command@ took {seconds:.1f} s to refuse a bad input"


def test_bl_grid_refuses_before_any_server(tmp_path):
    """As a user runs it: no Prefect server, no output directory, a few seconds."""
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "grid", "--config", "micro", "--out", str(out)]
        + ["--set", "grid.budgets=[]"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("bl grid: error: grid.budgets=[]")
    assert "Traceback" not in done.stderr and "Prefect" not in done.stderr.splitlines()[-1]
    assert not out.exists()
    assert seconds < 30  # imports only; a server start alone is 15-50 s here


def test_presets_pass_validation():
    from bl_core.preset_files import resolve_config
    from bl_core.validate import validate_config

    for name in ("micro", "tiny"):
        validate_config(resolve_config(name)[0])


def test_plan_says_when_it_fills_library_defaults(tmp_path, capsys):
    from bl_core.cli import main

    config = tmp_path / "config.json"
    config.write_text('{"model_type": "mistral"}')
    assert main(["plan", "--model-config", str(config), "--steps", "10", "--json"]) == 0
    err = capsys.readouterr().err
    assert "mistral defaults" in err and "hidden_size=4096" in err
