"""Load exported students with transformers alone: run by ``test_export.py`` as
``python -I -S transformers_only.py SITE_PACKAGES JOB.json OUT_DIR``.

``-I -S``: no user site, no ``site`` import (so no ``.pth`` file runs and the project's
editable-install hook is never installed), no script or working directory on ``sys.path``.
Only the given site-packages directory is added, for torch and transformers: the
equivalent of a fresh virtualenv without the project. The job lists model directories;
for each, the results (plain load refused or not, class, greedy tokens with and without
the KV cache) go to ``OUT_DIR/results.json`` and the logits to ``OUT_DIR/<name>.safetensors``.
"""

import importlib.util
import json
import sys
from pathlib import Path

site_packages, job_path, out_dir = sys.argv[1:4]
sys.path.append(site_packages)
for root in ("bl_core", "tasks", "flows"):
    if importlib.util.find_spec(root) is not None:
        raise SystemExit(f"the project is importable here ({root}): not a clean interpreter")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

job = json.loads(Path(job_path).read_text())
ids = torch.tensor(job["ids"])
generate_kwargs = job["generate"]
results = {}
for name, model_dir in job["models"].items():
    result = {}
    try:
        AutoModelForCausalLM.from_pretrained(model_dir)
        result["plain_load"] = "loaded"
    except ValueError as err:  # transformers asks for trust_remote_code
        result["plain_load"] = str(err)
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
    result["class"] = f"{type(model).__module__}.{type(model).__name__}"
    with torch.no_grad():
        logits = model(ids).logits
        for use_cache in (True, False):
            tokens = model.generate(ids[:, :4], use_cache=use_cache, **generate_kwargs)
            result[f"tokens_cache_{use_cache}"] = tokens.tolist()
    save_file({"logits": logits.contiguous()}, str(Path(out_dir) / f"{name}.safetensors"))
    if name == job.get("resave"):  # save_pretrained -> from_pretrained, remote code both ways
        again_dir = Path(out_dir) / "resaved"
        model.save_pretrained(again_dir)
        again = AutoModelForCausalLM.from_pretrained(again_dir, trust_remote_code=True).eval()
        same = model.state_dict().keys() == again.state_dict().keys() and all(
            torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items()
        )
        result["resave_bit_exact"] = same
        result["resave_files"] = sorted(p.name for p in again_dir.iterdir())
    results[name] = result
(Path(out_dir) / "results.json").write_text(json.dumps(results))
