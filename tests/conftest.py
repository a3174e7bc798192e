import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="marked slow (real data or multi-process training); run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _migrated_mlflow_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every fresh SQLite tracking store in this process starts from one copy of MLflow's schema.

    MLflow creates a new store's tables by running its ~60 Alembic migrations, about 2 s each time
    on 2 cores: 41 stores took 94 of the suite's 410 s (measured 2026-12-07). The real migrations
    run once, for the first store, into a template with the tables only; each new store then gets
    the template's pages through SQLite's backup API, and MLflow goes on as for any fresh store
    (default experiment with that store's artifact root, schema check). Other databases and the stores
    of subprocesses migrate as usual."""
    import sqlite3
    from contextlib import closing

    import mlflow.store.db.utils as db_utils
    import mlflow.store.model_registry.sqlalchemy_store as registry_store
    import sqlalchemy

    migrate = db_utils._initialize_tables
    template = tmp_path_factory.getbasetemp() / "mlflow_schema.db"  # migrated on first use only

    def from_template(engine: Any) -> None:
        if engine.dialect.name != "sqlite":
            return migrate(engine)
        if not template.exists():
            partial = template.with_suffix(".partial")  # a failed migration leaves no template
            scratch = sqlalchemy.create_engine(f"sqlite:///{partial}")
            migrate(scratch)
            scratch.dispose()
            partial.rename(template)
        raw = engine.raw_connection()
        try:
            with closing(sqlite3.connect(template)) as src:
                src.backup(raw.driver_connection)
        finally:
            raw.close()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(db_utils, "_initialize_tables", from_template)
        mp.setattr(registry_store, "_initialize_tables", from_template)
        yield


# --- a tiny real MLflow store shared by the sweep, browser and notebook tests (issue 6) ---

FIXTURES = Path(__file__).parent / "fixtures"


@dataclass(frozen=True)
class TinyStore:
    """A 2x1 sweep (loss.kind=softmax,debiased; 1 epoch) + a popularity baseline on the ml-100k
    fixture, in a SQLite MLflow store under a session tmp dir."""

    root: Path
    tracking_uri: str
    experiment: str
    data_path: Path
    summary: dict[str, Any]


def tiny_sweep_args(root: Path, *extra: str) -> list[str]:
    """Arguments for ``pipelines.sweep.main`` that train tiny models on the ml-100k fixture."""
    return [
        "--set", f"data.path={FIXTURES / 'ml-100k'}",
        "--set", f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
        "--set", "tracking.experiment=tiny",
        "--set", f"train.checkpoint_dir={root / 'ck'}",
        "--set", "train.epochs=1", "--set", "train.batch_size=8", "--set", "train.progress=false",
        "--set", "model.embedding_dim=8", "--set", "user_tower.history_length=4",
        *extra,
    ]


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyStore]:
    from pipelines import sweep

    root = tmp_path_factory.mktemp("tiny_store")
    old_cwd, old_uri = os.getcwd(), os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.chdir(root)  # the experiment's default artifact folder (./mlruns) lands in root
    try:
        summary = sweep.main(["--grid", "loss.kind=softmax,debiased", "--baselines", "popularity",
                              *tiny_sweep_args(root)])
    finally:
        os.chdir(old_cwd)
        if old_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
    yield TinyStore(root, f"sqlite:///{root / 'mlflow.db'}", "tiny", FIXTURES / "ml-100k", summary)


@pytest.fixture
def sweep_args() -> Any:
    """``tiny_sweep_args`` as a fixture (test modules cannot import conftest reliably)."""
    return tiny_sweep_args


_HOLD_LOCK = """
import sys, time
from recsys_cl.train.checkpoint import checkpoint_lock
with checkpoint_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def hold_checkpoint() -> Iterator[Any]:
    """``hold_checkpoint(path) -> Popen``: another process holding ``checkpoint_lock(path)``, as a
    training run with that checkpoint does, until the test kills it (or the test ends)."""
    import subprocess
    import sys

    procs: list[subprocess.Popen[bytes]] = []

    def hold(path: Path) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
        proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(path)], stdout=subprocess.PIPE, env=env)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == b"held\n", "the holder did not take the lock"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture
def option_help(capsys: pytest.CaptureFixture[str]) -> Callable[[Callable[[list[str]], Any], str], str]:
    """``read(main, "--flag")``: the help text ``main(["--help"])`` prints for one option, its
    whitespace collapsed (for tests that a --help says what an option does)."""
    def read(main: Callable[[list[str]], Any], flag: str) -> str:
        with pytest.raises(SystemExit):
            main(["--help"])
        out = capsys.readouterr().out
        found = re.search(rf"^  {re.escape(flag)}(?: \S+)?\s+(.*?)(?=^  -|^\S|\Z)", out, re.M | re.S)
        assert found is not None, f"{flag} is not in --help:\n{out}"
        return " ".join(found.group(1).split())

    return read
