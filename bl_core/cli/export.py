"""``bl export``: write a compressed student as a Hugging Face model directory (DESIGN §5.3).

SRC is a compressed student directory of any version (the compress stage's output; older
ones hold a stock ``config.json`` that plain transformers would open as a dense model with
random projections). OUT gets ``config.json`` with each module's form and rank, safetensors,
the tokenizer, the modeling code ``auto_map`` names and a model card, written atomically.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bl_core.errors import InputError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="a compressed student dir as a Hugging Face model dir (from_pretrained, vLLM)",
        description="Convert a compressed student directory (any version) into a Hugging Face "
        "model directory that AutoModelForCausalLM.from_pretrained opens with transformers "
        "alone (trust_remote_code=True), or without remote code where the project is installed.",
    )
    p.add_argument("src", metavar="SRC", help="compressed student directory")
    p.add_argument("out", metavar="OUT", help="output directory (must not exist)")
    p.add_argument(
        "--speed",
        metavar="SPEED_JSON",
        help="a measure-speed result (speed.json) whose measured speedups go in the model card",
    )
    p.add_argument(
        "--final-fraction",
        type=float,
        metavar="F",
        help="the budget the student was trained for, for the model card (older directories "
        "do not record it)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)


def _read_speed(path: str | None) -> dict | None:
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"--speed {path!r} does not exist") from None
    except json.JSONDecodeError as err:
        raise InputError(f"--speed {path!r} is not valid JSON: {err}") from None


def run(args: argparse.Namespace) -> int:
    from bl_core.export import convert_legacy

    speed = _read_speed(args.speed)
    if not Path(args.src).is_dir():
        raise InputError(f"SRC {args.src!r} does not exist")
    if Path(args.out).exists() and not args.overwrite:
        raise InputError(f"OUT {args.out!r} already exists (pass --overwrite to replace it)")
    out = convert_legacy(
        args.src, args.out, speed, overwrite=args.overwrite, final_fraction=args.final_fraction
    )
    config = json.loads((out / "config.json").read_text())
    remote = "auto_map" in config
    print(f"wrote {out} (model_type {config['model_type']})")
    print(
        "load: AutoModelForCausalLM.from_pretrained("
        f"{str(out)!r}{', trust_remote_code=True' if remote else ''})"
    )
    return 0
