"""Models given by local directory or by Hugging Face Hub id (``org/name``, optional
``revision``): teachers, ``bl eval MODEL`` and ``bl plan --model-config``.

A Hub id is resolved once to its local snapshot directory (downloaded, or from the cache
when ``HF_HUB_OFFLINE=1``), which everything downstream reads like any model directory,
through ``from_pretrained``. Only configs, tokenizer files and safetensors are fetched:
pickled weights (``*.bin``, ``*.pt``) and Python files are never downloaded, so nothing is
unpickled and no remote code can run.
"""

from __future__ import annotations

import re
from pathlib import Path

from bl_core.errors import InputError

# "org/name" as the Hub spells repo ids; a path meant as local starts with . / ~ or has
# more than one separator (so "checkpoints/teacher" is tried locally first, then on the Hub).
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def _hub_error(what: str, repo_id: str, revision: str | None, err: Exception) -> InputError:
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f" at revision {revision!r}" if revision else ""
    head = f"{what} {repo_id!r}{at} is not a local directory and could not be loaded from the "
    if constants.HF_HUB_OFFLINE:
        why = (
            f"Hugging Face Hub: HF_HUB_OFFLINE=1 is set and it is not in the local cache "
            f"({constants.HF_HUB_CACHE}). Download it on a machine with network "
            f"(`hf download {repo_id}`) or unset HF_HUB_OFFLINE."
        )
    elif isinstance(err, GatedRepoError):
        why = "Hugging Face Hub: it is gated; accept its terms and log in (`hf auth login`)."
    elif isinstance(err, RevisionNotFoundError):
        why = "Hugging Face Hub: no such revision."
    elif isinstance(err, RepositoryNotFoundError):
        why = (
            "Hugging Face Hub: no such model (or it is private: log in with `hf auth login`). "
            "Check the id; HF_HUB_OFFLINE is not set, so the Hub was asked."
        )
    elif isinstance(err, LocalEntryNotFoundError):
        why = (
            "Hugging Face Hub: it is unreachable from here and the model is not in the local "
            f"cache ({constants.HF_HUB_CACHE}). Download it where there is network "
            f"(`hf download {repo_id}`), then run with HF_HUB_OFFLINE=1."
        )
    else:
        why = f"Hugging Face Hub: {type(err).__name__}: {err}"
    return InputError(head + why)


def resolve_model_dir(source: str, revision: str | None = None, what: str = "model") -> str:
    """A local model directory for ``source``: itself when it exists locally, else the
    snapshot of Hub id ``source`` at ``revision`` (default: main). ``what`` names it in
    errors ("teacher '1B'")."""
    if Path(source).expanduser().exists():
        if revision is not None:
            raise InputError(
                f"{what} {source!r} is a local directory: revision {revision!r} applies to "
                "Hub ids (org/name) only"
            )
        return source
    if not _REPO_ID.match(source):
        raise InputError(
            f"{what} directory {source!r} does not exist (nor is it a Hub id, org/name)"
        )
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(source, revision=revision, allow_patterns=MODEL_FILES)
    except (OSError, ValueError) as err:  # hub HTTP errors are OSErrors, bad ids ValueErrors
        raise _hub_error(what, source, revision, err) from None
    if not any(Path(local).glob("*.safetensors")):
        raise InputError(
            f"{what} {source!r} has no safetensors weights on the Hub (pickled .bin weights "
            "are never loaded)"
        )
    return local


def resolve_model_config(source: str, revision: str | None = None) -> str:
    """A local ``config.json`` file or model directory for ``source`` (a file, a directory
    or a Hub id: only its ``config.json`` is fetched)."""
    if Path(source).expanduser().exists():
        return source
    if not _REPO_ID.match(source):
        raise InputError(f"model config {source!r} does not exist (nor is it a Hub id, org/name)")
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(source, "config.json", revision=revision)
    except (OSError, ValueError) as err:
        raise _hub_error("model config", source, revision, err) from None
