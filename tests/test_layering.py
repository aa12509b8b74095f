"""Imports go one way (STYLE.md): flows -> tasks -> bl_core; bl_core never imports
prefect or mlflow."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_bl_core_is_free_of_orchestration_and_tracking():
    offenders = {
        str(p.relative_to(ROOT)): sorted(
            _imported_roots(p) & {"prefect", "mlflow", "tasks", "flows"}
        )
        for p in (ROOT / "bl_core").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_tasks_never_import_flows():
    for p in (ROOT / "tasks").rglob("*.py"):
        assert "flows" not in _imported_roots(p), p
