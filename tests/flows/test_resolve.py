"""Flow parameters -> the resolved config (values applied as given, errors named)."""

import pytest

from bl_core.errors import ConfigError


def test_parameters_override_the_preset():
    from flows.preflight import grid_config

    cfg, preset = grid_config(
        "micro", {"tracking.uri": None, "icl.items_per_task": 3}, ["kd_lora"], [0.1], [0, 1]
    )
    assert preset == "micro" and cfg.tracking.uri is None and cfg.icl.items_per_task == 3
    assert cfg.grid.methods == ("kd_lora",) and cfg.grid.budgets == (0.1,)
    assert cfg.pipeline.seeds == (0, 1)


def test_bad_parameters_fail_before_any_work():
    from flows.preflight import grid_config

    with pytest.raises(ConfigError, match="grid.budgets"):
        grid_config("micro", None, None, [1.5], None)
    with pytest.raises(ConfigError, match="preset"):
        grid_config("no-such-preset", None, None, None, None)
