"""The ``bl`` command's shape: one convention for every subcommand, and help that does not
wait for torch, transformers or Prefect."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flows.cli import bl_parser

CONFIG_COMMANDS = ("grid", "train", "scaling", "eval", "plan")


def test_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from flows.cli import main\n"
        "for argv in (['--help'], ['train', '--help'], ['eval', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = {'torch', 'transformers', 'prefect', 'mlflow', 'pandas'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_every_config_command_takes_config_set_and_out(command):
    sub = bl_parser()._subparsers._group_actions[0].choices[command]
    options = {o for action in sub._actions for o in action.option_strings}
    assert {"--config", "--set", "--out"} <= options


def test_bl_train_names_an_unknown_teacher_before_any_work(tmp_path, capsys):
    from flows.cli import main

    assert main(["train", "--config", "micro", "--teacher", "nope", "--out", str(tmp_path)]) == 2
    assert (
        "--teacher 'nope' is not in the ladder (known: micro-s, micro-m)" in capsys.readouterr().err
    )
    assert list(tmp_path.iterdir()) == []
