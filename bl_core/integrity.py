"""Cheap integrity checks of weight files, so a damaged file is named in one line instead of
surfacing as a library traceback (``SafetensorError: ... incomplete metadata``).

A safetensors file is ``<u64 little-endian header length N><N bytes of JSON header><data>``;
the header gives every tensor's ``data_offsets`` into the data. Reading the header (a few KB)
tells whether the file is complete without loading any tensor.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from bl_core.errors import InputError

_MAX_HEADER = 100 * 2**20  # the safetensors library's own limit


def safetensors_problem(path: str | Path) -> str | None:
    """What is wrong with a safetensors file (``None``: its header and size agree)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"truncated: {size} bytes, not even a header length"
            (length,) = struct.unpack("<Q", head)
            if length > _MAX_HEADER or 8 + length > size:
                return f"truncated or not safetensors: header of {length} bytes, file of {size}"
            header = json.loads(f.read(length))
    except OSError as err:
        return f"unreadable: {err.strerror or err}"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "not safetensors: the header is not JSON"
    if not isinstance(header, dict):
        return "not safetensors: the header is not a JSON object"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            return f"not safetensors: tensor {name!r} has no data_offsets"
    if 8 + length + end > size:
        return f"truncated: {size} bytes, the header needs {8 + length + end}"
    return None


def check_safetensors(path: str | Path, what: str = "weights file") -> None:
    """Raise :class:`InputError` naming ``path`` when it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {str(path)!r} does not exist")
    problem = safetensors_problem(path)
    if problem is not None:
        raise InputError(f"{what} {str(path)!r} is damaged ({problem})")


def check_weights_dir(model_dir: str | Path, what: str = "model directory") -> None:
    """Every ``*.safetensors`` file of a model directory is complete; a directory with only
    pickled ``.bin`` weights is refused (they are never loaded)."""
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files and any(model_dir.glob("*.bin")):
        raise InputError(
            f"{what} {str(model_dir)!r} has only pickled .bin weights (never loaded); "
            "convert them to safetensors"
        )
    for file in files:
        check_safetensors(file)


def check_json_file(path: str | Path, what: str = "file") -> dict:
    """A JSON object read from ``path``; a missing or unparsable file is an InputError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{what} {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{what} {str(path)!r} is damaged (not JSON: {err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{what} {str(path)!r} is damaged (not a JSON object)")
    return data
