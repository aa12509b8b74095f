"""The environment of a ``bl`` command that a test starts as a user would run it."""

from __future__ import annotations

import os

# A user's shell has none of these: each command starts its own Prefect server and home
# and its own MLflow store under the output directory.
_SESSION_ONLY = ("PREFECT_HOME", "PREFECT_API_URL", "MLFLOW_TRACKING_URI")


def user_env(**overrides: str) -> dict[str, str]:
    """This process's environment without the test session's Prefect/MLflow settings,
    offline, with Prefect's analytics off, then ``overrides``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    for name in _SESSION_ONLY:
        env.pop(name, None)
    return env | overrides
