"""The ablations flow on the micro ladder: variants are cells, shared work is cached."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from bl_core.errors import ConfigError
from tasks.common import read_executions

pytestmark = pytest.mark.slow


def test_schedule_and_compression_sweeps(tmp_path, prefect_harness):
    from flows.ablations import ablations

    result = ablations(
        config="micro",
        output_dir=str(tmp_path),
        sweeps=["schedule", "compression"],
        overrides={"pipeline.retries": 0, "icl.items_per_task": 2},
    )
    frame = pd.read_csv(result["report"]["csv"])
    assert Counter(frame["sweep"]) == {"schedule": 3, "compression": 9}
    assert not frame["PPL"].isna().any()
    schedule = frame[frame["sweep"] == "schedule"].set_index("variant")
    # no schedule removes dense compute earliest: the cheapest training of the three
    assert schedule.loc["none", "Train compute"] < schedule.loc["short-decay", "Train compute"]
    assert (
        schedule.loc["short-decay", "Train compute"] < schedule.loc["long-decay", "Train compute"]
    )
    distills = Counter(e["label"] for e in read_executions(tmp_path) if e["stage"] == "distill")
    compression = [k for k in distills if k.startswith("ablation/compression/")]
    # nine threshold pairs, one training: the compression-only change never retrains
    assert len(compression) == 1
    assert "## compression" in (tmp_path / "report" / "ablations.md").read_text()


def test_unknown_sweep_is_a_clear_error(tmp_path, prefect_harness):
    from flows.ablations import ablations

    with pytest.raises(ConfigError, match="unknown sweep"):
        ablations(config="micro", output_dir=str(tmp_path), sweeps=["temperature"])
