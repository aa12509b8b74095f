"""The token-scaling flow on the micro ladder: one cohort per teacher, ratios to KD LoRA at
every budget and seed, and a new budget reusing the data, teachers and finished cells."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from tasks.common import read_executions

pytestmark = pytest.mark.slow

OVERRIDES = {"pipeline.retries": 0}


def test_token_scaling_reports_ratios_and_reuses_the_cache(tmp_path, prefect_harness):
    from flows.scaling import token_scaling

    kwargs = {"config": "micro", "output_dir": str(tmp_path), "budgets": [0.0], "seeds": [0, 1]}
    result = token_scaling(steps=[4, 8], overrides=OVERRIDES, **kwargs)
    frame = pd.read_csv(result["report"]["csv"])
    assert len(frame) == 2 * 2  # 2 budgets x 2 seeds, F = 0
    assert (frame["ratio"] == frame["ppl"] / frame["ppl_kd_lora"]).all()
    assert (tmp_path / "report" / "scaling.png").stat().st_size > 1000
    first = read_executions(tmp_path)
    stages = Counter(e["stage"] for e in first)
    assert stages["prepare-teacher"] == 2 and stages["split-corpus"] == 1  # once, not per budget
    assert stages["distill-cohort"] == 1 and stages["distill"] == 2 * 2 * 2
    assert "evaluate-icl" not in stages  # perplexity only

    result = token_scaling(steps=[4, 8, 16], overrides=OVERRIDES, **kwargs)
    again = read_executions(tmp_path)[len(first) :]
    assert {e["stage"] for e in again} == {
        "distill-cohort",
        "distill",
        "compress",
        "evaluate-perplexity",
        "scaling-report",
    }
    assert {e["label"] for e in again if e["stage"] == "distill"} == {
        f"scaling/{m}/steps16/s{s}" for m in ("kd_lora", "budgeted-F0.00") for s in (0, 1)
    }
    assert len(pd.read_csv(result["report"]["csv"])) == 3 * 2
