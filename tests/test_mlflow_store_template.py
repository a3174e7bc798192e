"""The suite's pre-migrated SQLite schema (tests/conftest.py) gives the same store as MLflow's own
migrations, which a subprocess runs (the template does not reach other processes)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow

_DESCRIBE = """
import json, sqlite3, sys
import mlflow
uri = "sqlite:///" + sys.argv[1]
exp = mlflow.MlflowClient(uri).get_experiment("0")
mlflow.MlflowClient(uri).search_registered_models()
print(json.dumps([exp.name, exp.artifact_location]))
"""


def _schema(db: Path) -> list[tuple[object, ...]]:
    """Tables and indexes with their definitions, and the Alembic revision. A definition is compared
    as its sorted lines: MLflow's migrations write a table's constraints in an order that changes
    from one process to the next (two real migrations differ there too)."""
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()
        version = c.execute("SELECT version_num FROM alembic_version").fetchall()
    return [(t, n, tbl, sorted(ln.strip().rstrip(",") for ln in (sql or "").splitlines()))
            for t, n, tbl, sql in rows] + [("alembic", version)]


def test_template_store_equals_a_migrated_one(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json

    monkeypatch.chdir(tmp_path)
    here = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'here.db'}").get_experiment("0")
    mlflow.MlflowClient(f"sqlite:///{tmp_path / 'here.db'}").search_registered_models()
    out = subprocess.run([sys.executable, "-c", _DESCRIBE, str(tmp_path / "there.db")], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [here.name, here.artifact_location]
    assert here.name == "Default" and here.artifact_location == str(tmp_path / "mlruns" / "0")
    a, b = _schema(tmp_path / "here.db"), _schema(tmp_path / "there.db")
    assert len(a) > 40 and a == b
