"""The small logging interface training reports through.

``bl_core`` never imports a tracking server's client; the pipeline backs
:class:`MetricsLogger` with MLflow, the CLI with :class:`JsonlLogger`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol


class MetricsLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_params(self, params: dict[str, Any]) -> None: ...


class NullLogger:
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass


class JsonlLogger:
    """Appends one JSON object per call to ``path`` (flushed, so a crash keeps the log)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._append({"step": step, **metrics})

    def log_params(self, params: dict[str, Any]) -> None:
        self._append({"params": params})

    def keep_until(self, step: int) -> list[dict[str, Any]]:
        """Drop the records of steps after ``step`` (logged before a crash, then redone by
        the resumed run: kept, they would appear twice); return the metric records kept."""
        if not self.path.is_file():
            return []
        records = [json.loads(line) for line in self.path.read_text().splitlines() if line]
        kept = [r for r in records if r.get("step", 0) <= step]
        if len(kept) != len(records):
            from bl_core.io import atomic_write_text

            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        return [r for r in kept if "step" in r]


class FanoutLogger:
    """Sends every call to several loggers."""

    def __init__(self, *loggers: MetricsLogger) -> None:
        self.loggers = loggers

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    def log_params(self, params: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_params(params)

    def replay(self, records: list[dict[str, Any]]) -> None:
        """Earlier steps of a resumed run, to the loggers that keep a history
        (``replay`` method: a tracking run that started with this process)."""
        for logger in self.loggers:
            if hasattr(logger, "replay"):
                logger.replay(records)
