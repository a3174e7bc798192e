"""pipelines.cli.configure_logging: the pipelines' log lines, without third-party start-up noise."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]


def _stderr_of(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_faiss_loader_noise_is_held_back_and_our_info_lines_are_not() -> None:
    pytest.importorskip("faiss")
    code = ("import logging; {setup}; import faiss; "
            "logging.getLogger('recsys_cl.x').info('our line')")
    plain = _stderr_of(code.format(setup="logging.basicConfig(level=logging.INFO)"))
    assert "Could not load library" in plain or "Loading faiss" in plain  # what faiss says at INFO
    ours = _stderr_of(code.format(setup="from pipelines.cli import configure_logging; configure_logging()"))
    assert "faiss.loader" not in ours and "ModuleNotFoundError" not in ours
    assert "INFO recsys_cl.x: our line" in ours


def test_print_fold_in_says_how_the_clicks_were_taken_in(capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import print_fold_in

    base = {"clicks": 12, "clicks_until": "2018-09-24", "items": 4}
    print_fold_in({**base, "method": "sum", "step": 0.5}, 0.031)
    print_fold_in({**base, "method": "fit", "window_clicks": 877})
    print_fold_in({**base, "method": "fit", "window_clicks": 1_250_000, "fit_clicks": 20_000})
    print_fold_in({}, 0.02)
    print_fold_in({}, 0.0)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "new items: 12 clicks up to 2018-09-24 taken into the vectors of 4 items without training clicks "
        "(summed, item_tower.fold_in_step 0.5); they are 3.1% of the rows written",
        "new items: 12 clicks up to 2018-09-24 taken into the vectors of 4 items without training clicks "
        "(fit to the window's 877 clicks)",
        "new items: 12 clicks up to 2018-09-24 taken into the vectors of 4 items without training clicks "
        "(fit to a weighted sample of 20,000 of the window's 1,250,000 clicks, new items' clicks first)",
        "new items (no training clicks, ranked on content alone): 2.0% of the rows written",
    ]


def test_help_shows_the_default_config_relative_to_the_checkout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    from pipelines.cli import shown_path

    default = ROOT / "pipelines" / "configs" / "two_tower.yaml"
    monkeypatch.chdir(ROOT)
    assert shown_path(default) == "pipelines/configs/two_tower.yaml"  # not wrapped mid-word by argparse
    monkeypatch.chdir(tmp_path)  # run from elsewhere: the full path, which is the one that works there
    assert shown_path(default) == str(default)


def test_checking_an_output_file_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job refused on its config after the output check left the output's folder behind, empty
    (ablation's default --out runs/ablation.md made runs/ on an unknown --only name)."""
    from pipelines import ablation
    from pipelines.cli import check_output_file, write_summary

    target = tmp_path / "new" / "sub" / "x.json"
    check_output_file(target)
    assert not (tmp_path / "new").exists()
    write_summary(str(target), {"ok": 1})  # the writer creates the folders
    assert json.loads(target.read_text()) == {"ok": 1}
    (tmp_path / "gone").symlink_to(tmp_path / "missing")
    with pytest.raises(SystemExit, match=r"its folder cannot be created \(.*gone is a symlink to a missing folder\)"):
        check_output_file(tmp_path / "gone" / "x.json")

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(SystemExit, match="unknown variant"):
        ablation.main(["--only", "nope", "--seeds", "0", "--no-baselines",
                       "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    assert list(work.iterdir()) == []


def test_an_output_path_through_a_file_names_that_file(tmp_path: Path) -> None:
    """mkdir said only '(File exists)' or '(Not a directory)', after the path that could not be written."""
    from pipelines.cli import check_output_dir, check_output_file

    afile = tmp_path / "afile"
    afile.write_text("x")
    for path in (afile / "x.json", afile / "sub" / "x.json"):
        with pytest.raises(SystemExit) as info:
            check_output_file(path)
        assert str(info.value) == (f"output error: --summary-json {path} cannot be written: {afile} on its path is a "
                                   "file, not a folder; pass a file path in a writable folder")
    check_output_file(afile)  # an existing file is overwritten
    with pytest.raises(SystemExit, match=rf"^output error: train\.checkpoint_dir={afile} is a file, not a folder; "
                                         r"set it to a writable folder$"):
        check_output_dir(afile, "train.checkpoint_dir")
    with pytest.raises(SystemExit, match=rf"^output error: train\.checkpoint_dir={afile}/ck cannot be created: "
                                         rf"{afile} on its path is a file, not a folder; set it to a writable folder$"):
        check_output_dir(afile / "ck", "train.checkpoint_dir")
    check_output_dir(tmp_path / "new" / "ck", "train.checkpoint_dir")
    # nothing is created: a job that then fails on its input leaves no empty folder behind
    assert not (tmp_path / "new").exists()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "missing" / "dir")
    for path in (dangling, dangling / "ck"):  # found before any work, not at the first checkpoint
        with pytest.raises(SystemExit, match=rf"^output error: train\.checkpoint_dir={path} cannot be created: "
                                             rf"{dangling} is a symlink to a missing folder"):
            check_output_dir(path, "train.checkpoint_dir")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # root writes anywhere
        with pytest.raises(SystemExit, match=rf"^output error: train\.checkpoint_dir={locked}/ck cannot be created "
                                             rf"\({locked} is not writable\); set it to a writable folder$"):
            check_output_dir(locked / "ck", "train.checkpoint_dir")


def test_write_summary_replaces_the_file_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill mid-write left a truncated summary where the last good one was: now a temp file beside
    it is renamed over it, so a reader sees the old file or the new one."""
    import os

    from pipelines import cli

    path = tmp_path / "out" / "summary.json"
    cli.write_summary(str(path), {"run": 1})
    inode = path.stat().st_ino
    cli.write_summary(str(path), {"run": 2})
    assert json.loads(path.read_text()) == {"run": 2}
    assert path.stat().st_ino != inode  # a new file renamed into place, not the old one truncated and rewritten
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]  # no temp file left

    def killed(src: object, dst: object) -> None:
        raise KeyboardInterrupt  # the process stopped between writing the temp file and the rename

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        cli.write_summary(str(path), {"run": 3})
    assert json.loads(path.read_text()) == {"run": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]


@pytest.mark.parametrize("module, section, keys", [
    ("generate_candidates", "candidates", ["k", "lookback_days", "output_dir", "index_dir", "alias"]),
    ("nightly", "candidates", ["k", "lookback_days", "output_dir", "index_root", "alias", "min_overlap",
                               "min_served_share", "min_ann_recall", "min_known_item_share", "max_new_item_share"]),
    ("build_index", "index", ["backend", "target_recall", "k", "recall_sample_users", "output_dir"]),
])
def test_serving_help_states_the_defaults(module: str, section: str, keys: list[str],
                                          capsys: pytest.CaptureFixture) -> None:
    """The defaults that decide what a run reads and where it writes (nightly: and its health
    thresholds), as the config class has them."""
    import dataclasses
    import importlib

    from recsys_cl.config import CandidatesConfig, IndexConfig

    with pytest.raises(SystemExit):
        importlib.import_module(f"pipelines.{module}").main(["--help"])
    shown = capsys.readouterr().out
    cls = CandidatesConfig if section == "candidates" else IndexConfig
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for key in keys:
        value = "null" if defaults[key] is None else defaults[key]
        assert re.search(rf"^  {section}\.{key}={re.escape(str(value))} ", shown, re.M), (key, shown)
    if section == "index":
        return
    assert "candidates.k=100 " in shown and "candidates.lookback_days=30 " in shown


def test_generate_candidates_help_says_when_a_saved_index_backend_is_checked(option_help: Any) -> None:
    """With --index, only an explicit --backend is checked against the saved index; the config's
    candidates.backend (exact by default) is not, so the help must not read as if it were."""
    from pipelines import generate_candidates

    shown = option_help(generate_candidates.main, "--backend")
    assert "when the flag is given" in shown and "candidates.backend is not checked" in shown


PIPELINES = sorted(p.stem for p in Path(__file__).parents[2].joinpath("pipelines").glob("*.py")
                   if p.stem not in {"__init__", "cli"})


@pytest.mark.parametrize("module", PIPELINES)
def test_every_option_says_what_it_does(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each option's --help says what it is for, not only its default ('default: candidates.engine'
    left --engine's choices unexplained)."""
    import argparse
    import importlib

    parsers: list[argparse.ArgumentParser] = []

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        importlib.import_module(f"pipelines.{module}").main([])
    assert parsers
    for action in parsers[0]._actions:
        if action.help == argparse.SUPPRESS:
            continue
        without_default = re.sub(r"\(?default:[^)]*\)?", "", action.help or "")
        assert len(re.findall(r"[A-Za-z]{2,}", without_default)) >= 2, (
            f"pipelines.{module} {'/'.join(action.option_strings)}: help {action.help!r}")
    shown = parsers[0].format_help()  # read in a terminal: the docstrings' ``code`` shows as `code`
    assert "``" not in shown, f"pipelines.{module} --help"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_exits_128_plus_its_number_in_one_line(sig: int, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM and Ctrl-C become a SystemExit (the cleanup of an exception runs; not KeyboardInterrupt,
    which py4j logs with a traceback), reported as one line; the handlers are restored afterwards."""
    from pipelines.cli import exits_on_tracking_error

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    cleaned = []

    @exits_on_tracking_error
    def main() -> None:
        try:
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler raises here
        finally:
            cleaned.append(True)

    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 128 + sig and cleaned == [True]
    assert capsys.readouterr().err == f"stopped by {signal.Signals(sig).name}\n"
    assert {s: signal.getsignal(s) for s in before} == before


def test_serving_printouts_say_what_was_measured_and_checked() -> None:
    from pipelines.cli import overlap_text, recall_text

    recall = {"recall_at_k": 0.9075, "sample_users": 200, "k": 20}
    assert recall_text({"backend": "faiss", "ann_recall": recall}) == "recall@K vs exact 0.907 (200 users sampled)"
    assert recall_text({"backend": "exact", "ann_recall": {"recall_at_k": 1.0}}) == "exact search"
    assert overlap_text({"previous_partition": None}) == "overlap@K n/a (no earlier partition)"
    same = {"previous_partition": "out/dt=2018-09-23", "overlap_at_k": 0.8, "overlap_users": 12,
            "same_model_as_previous": True, "previous_model_version": "3"}
    assert overlap_text(same) == "overlap@K 0.800 with dt=2018-09-23 over 12 users"
    # another model's lists are expected to differ: a low overlap is not a measurement of drift
    assert overlap_text({**same, "overlap_at_k": 0.0, "same_model_as_previous": False}) == (
        "overlap@K 0.000 with dt=2018-09-23 over 12 users, not checked: model version 3 there, another one now")


@pytest.mark.parametrize("pipeline", ["pretrain_simclr", "pretrain_simcse"])
def test_pretraining_help_names_real_keys(pipeline: str) -> None:
    """--help lists the main config keys; each must be one the config has (a renamed key would
    leave the help pointing at an 'unknown config key' error)."""
    import dataclasses
    import importlib

    from recsys_cl.config import flatten, load_config
    from recsys_cl.pretrain.config import SimCLRConfig, SimCSEConfig

    module = importlib.import_module(f"pipelines.{pipeline}")
    schema = SimCLRConfig if pipeline == "pretrain_simclr" else SimCSEConfig
    named = set(re.findall(r"\b((?:data|model|train|eval|tracking)\.[a-z_]+)", module.__doc__ or ""))
    flat = flatten(dataclasses.asdict(load_config(module.DEFAULT_CONFIG, schema)))
    assert len(named) >= 10 and sorted(named - set(flat)) == []
