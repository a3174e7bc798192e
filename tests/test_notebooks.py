"""Every notebook in notebooks/ runs top to bottom (as a percent-format script) on a tiny fixture.

01 trains its own model in a throwaway store, 06 one without MLflow, 07 times fold-in fits on
synthetic vectors; 02-05 read the session's ``tiny_store`` (a real 2x1
sweep + a popularity baseline on the ml-100k fixture, see tests/conftest.py) through the
RECSYS_CL_* environment variables, exactly as a user points them at their own store.
"""

import os
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))
# what each notebook must print: proof that it got to its last cells with real numbers
EXPECTED = {
    "01_train_and_evaluate.py": ["two-tower test:", "EASE test:"],
    "02_explore_click_log.py": ["48 clicks, 8 users", "clicks per user:", "the top 10% of items"],
    "03_compare_runs.py": ["finished runs in experiment 'tiny'", "best run: two_tower[", "| run_name |"],
    "04_inspect_candidates.py": ["active users, catalogue coverage", "candidates", "distinct items"],
    "05_item_embeddings.py": ["PCA explained variance", "neighbours of"],
    "06_fold_in_mixed_catalogue.py": ["items without training clicks;", "summed + normalised: all targets R@20",
                                      "fitted: all targets R@20", "fitted - content only, R@20 all targets:",
                                      "fit's sample holds", "fit, sample 3 - fit, uniform 3, R@20",
                                      "unweighted 3 - fitted, R@20",
                                      "fit, 5 steps lr 0.1 - fitted (100 steps lr 0.05), R@20 all targets:"],
    "07_fold_in_fit_cost.py": ["| 2,000 | 300 | 20 |", "| 3,000 | 400 | 30 |", "(2 steps timed, x 50.0)"],
}


def test_every_notebook_has_expectations() -> None:
    assert sorted(EXPECTED) == [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact folder lands here
    monkeypatch.setenv("RECSYS_CL_DATA", str(ROOT / "tests" / "fixtures" / "ml-100k"))
    monkeypatch.setenv("RECSYS_CL_EPOCHS", "1")
    monkeypatch.setenv("RECSYS_CL_FIT_SIZES", "2000x300,3000x400")  # 07: the second one above FULL_MAX
    monkeypatch.setenv("RECSYS_CL_FIT_FULL_MAX", "1e6")
    monkeypatch.setenv("RECSYS_CL_FIT_FULL_STEPS", "2")
    monkeypatch.setenv("RECSYS_CL_FIT_CAP", "3")  # 06: below the fixture's window
    monkeypatch.setenv("RECSYS_CL_FIT_GRID", "5x0.1")  # 06
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.setenv("MPLBACKEND", "Agg")  # plt.show() is a no-op
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if not path.name.startswith(("01_", "06_", "07_")):  # these train their own model / need none
        store = request.getfixturevalue("tiny_store")
        monkeypatch.setenv("RECSYS_CL_TRACKING_URI", store.tracking_uri)
        monkeypatch.setenv("RECSYS_CL_EXPERIMENT", store.experiment)
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-interactive.*")  # plt.show() under Agg
        runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    for text in EXPECTED[path.name]:
        assert text in out, f"{path.name} did not print {text!r}; it printed:\n{out[-3000:]}"
    if os.environ.get("RECSYS_CL_NOTEBOOK_OUT"):  # keep what each notebook printed, for a look
        Path(os.environ["RECSYS_CL_NOTEBOOK_OUT"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["RECSYS_CL_NOTEBOOK_OUT"]) / f"{path.stem}.txt").write_text(out)
