"""The commands, flags and config keys that README.md and docs/*.md show exist and load.

Each ``python -m pipelines.X ...`` (or ``torchrun ... -m pipelines.X ...``) in the docs is parsed:
every ``--flag`` must be in that pipeline's ``--help``, every concrete ``--set key=value`` and
``--grid key=a,b`` must load with that pipeline's config class, and placeholder values
(``<uri>``, ``$VAR``, ``YYYY-MM-DD``) must at least name a real key. Inline ``--set key=...``
fragments must name a key of some pipeline's config, the README's table of main keys must show
the defaults of ``pipelines/configs/two_tower.yaml``, the config error the README shows is the
one the loader raises, every optional extra the docs or a ``--help`` name is in setup.cfg, and the
examples in each pipeline's ``--help`` pass the same command checks.
Nothing runs: a renamed key or flag fails here instead of in a user's shell.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from recsys_cl.bench import BenchRunConfig
from recsys_cl.config import ConfigError, RunConfig, flatten, load_config
from recsys_cl.pretrain.config import SimCLRConfig, SimCSEConfig
from recsys_cl.sweep import split_values

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOC_TEXTS = {f.relative_to(ROOT).as_posix(): f.read_text() for f in DOCS}  # read once
TWO_TOWER_YAML = ROOT / "pipelines" / "configs" / "two_tower.yaml"

CONFIG_CLASS: dict[str, type] = {
    "train_two_tower": RunConfig, "build_index": RunConfig, "generate_candidates": RunConfig,
    "nightly": RunConfig, "evaluate_baselines": RunConfig, "sweep": RunConfig, "ablation": RunConfig,
    "pretrain_simclr": SimCLRConfig, "pretrain_simcse": SimCSEConfig, "benchmark_candidates": BenchRunConfig,
    "clean_cache": RunConfig,
}
PLACEHOLDER = re.compile(r"<[^>]*>|\$\w+|YYYY|\.\.\.|^[A-Z][A-Z_]*$")  # <uri>, $VAR, a date, YAML / PATH
GENERIC_KEYS = {"key", "section.key"}  # usage lines: `--set key=value`, `section.key=value`


@dataclasses.dataclass(frozen=True)
class DocCommand:
    where: str  # file:line
    module: str  # pipelines.<module>
    args: tuple[str, ...]  # the tokens after the module name
    output: str  # lines shown after a `$ command` in the same block ("" if none)

    def __str__(self) -> str:
        return f"{self.where}: {self.module} {' '.join(self.args)}"


def _tokens(command: str) -> list[str]:
    """shlex tokens with placeholders made single tokens and usage brackets ``[--flag X]`` removed."""
    command = re.sub(r"<[^>]*>", "<placeholder>", command)
    out = []
    for t in shlex.split(command, comments=True):
        if t.startswith("[-"):
            t = t[1:]
        if t.endswith("]") and "[" not in t:
            t = t[:-1]
        out.append(t)
    return out


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _doc_matches(pattern: str) -> list[tuple[str, re.Match[str]]]:
    """Every match of ``pattern`` in the docs, with its ``file:line``."""
    return [(f"{name}:{_line(text, m.start())}", m)
            for name, text in DOC_TEXTS.items() for m in re.finditer(pattern, text)]


def _commands_in(text: str, name: str) -> list[DocCommand]:
    found: list[DocCommand] = []

    def add(line_no: int, command: str, output: str = "") -> None:
        tokens = _tokens(command.strip().removeprefix("$ "))
        modules = [i for i, t in enumerate(tokens[:-1]) if t == "-m" and tokens[i + 1].startswith("pipelines.")]
        if modules:
            i = modules[0]
            found.append(DocCommand(f"{name}:{line_no}", tokens[i + 1].removeprefix("pipelines."),
                                    tuple(tokens[i + 2:]), output))

    for block in re.finditer(r"```[a-z]*\n(.*?)```", text, re.S):
        first = _line(text, block.start(1))
        lines = block.group(1).splitlines()
        i = 0
        while i < len(lines):
            start, line = i, lines[i]
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1] + " " + lines[i]
            output = ""
            if line.startswith("$ "):  # a shown session: what follows up to the next prompt is its output
                rest = lines[i + 1:]
                stop = next((k for k, r in enumerate(rest) if r.startswith("$ ")), len(rest))
                output = "\n".join(rest[:stop])
            if "-m pipelines." in line:
                add(first + start, line, output)
            i += 1
    for m in re.finditer(r"(?<!`)`([^`\n]*-m pipelines\.[^`\n]*)`(?!`)", text):
        add(_line(text, m.start()), m.group(1))
    return found


def doc_commands() -> list[DocCommand]:
    return [c for name, text in DOC_TEXTS.items() for c in _commands_in(text, name)]


@cache
def help_text(module: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        importlib.import_module(f"pipelines.{module}").main(["--help"])
    assert e.value.code in (0, None), f"pipelines.{module} --help exited {e.value.code}"
    return out.getvalue()


@cache
def known_keys(cls: type) -> frozenset[str]:
    return frozenset(flatten(dataclasses.asdict(load_config(None, cls))))


def _option_values(args: tuple[str, ...], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


COMMANDS = doc_commands()


def test_the_docs_show_commands_of_every_pipeline_with_a_config() -> None:
    """The parser finds what it is meant to: a broken regex would leave the tests below with nothing."""
    assert len(COMMANDS) >= 30
    assert {c.module for c in COMMANDS} >= set(CONFIG_CLASS) | {"make_fashion_clicks"}


@pytest.mark.parametrize("cmd", COMMANDS, ids=str)
def test_documented_flags_exist(cmd: DocCommand) -> None:
    shown = help_text(cmd.module)
    for flag in {a.split("=")[0] for a in cmd.args if a.startswith("--")}:
        assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", shown), (
            f"{cmd}: pipelines.{cmd.module} has no flag {flag} (see python -m pipelines.{cmd.module} --help)")


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.module in CONFIG_CLASS and not c.output], ids=str)
def test_documented_overrides_load(cmd: DocCommand) -> None:
    cls = CONFIG_CLASS[cmd.module]
    module = importlib.import_module(f"pipelines.{cmd.module}")
    config = [c for c in _option_values(cmd.args, "--config") if not PLACEHOLDER.search(c)]
    path = ROOT / config[-1] if config else Path(getattr(module, "DEFAULT_CONFIG", TWO_TOWER_YAML))
    concrete, overrides = [], [*_option_values(cmd.args, "--set")]
    for grid in _option_values(cmd.args, "--grid"):  # sweep: key=a,b,c is one run per value
        key, _, values = grid.partition("=")
        overrides += [f"{key}={v}" for v in split_values(values)]  # commas inside [...] stay, as in sweep
    for o in overrides:
        key, _, value = o.partition("=")
        if key in GENERIC_KEYS:
            continue
        if PLACEHOLDER.search(value):
            assert key in known_keys(cls), f"{cmd}: {key} is not a key of {cls.__name__}"
        else:
            concrete.append(o)
    for o in concrete:  # one at a time, so that a failure names the override
        try:
            load_config(path, cls, overrides=[o])
        except ConfigError as e:
            pytest.fail(f"{cmd}: --set {o} does not load: {e}")
    load_config(path, cls, overrides=concrete)


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.output], ids=str)
def test_shown_config_errors_are_what_the_loader_says(cmd: DocCommand) -> None:
    shown = cmd.output.strip()
    assert shown.startswith("config error: "), f"{cmd}: only config errors are checked, got {shown!r}"
    with pytest.raises(ConfigError) as e:
        load_config(TWO_TOWER_YAML, CONFIG_CLASS[cmd.module], overrides=_option_values(cmd.args, "--set"))
    expected = shown.removeprefix("config error: ").split("...")[0].rstrip(", ")
    assert str(e.value).startswith(expected), f"{cmd}: the docs show {expected!r}, the loader says {e.value}"


def test_inline_overrides_name_real_keys() -> None:
    keys = frozenset().union(*(known_keys(c) for c in set(CONFIG_CLASS.values())))
    shown_wrong = {o.partition("=")[0] for c in COMMANDS if c.output for o in _option_values(c.args, "--set")}
    unknown = [f"{where}: {m.group(1)}" for where, m in _doc_matches(r"--set '?([a-z_][\w.]*)=")
               if m.group(1) not in keys | GENERIC_KEYS | shown_wrong]
    assert not unknown, "the docs --set keys no config has:\n" + "\n".join(unknown)


def _doc_value(cell: str) -> Any:
    cell = re.sub(r"\s*\(.*\)$", "", cell.strip()).strip("`")
    return {"null": None, "true": True, "false": False}.get(cell, cell)


def test_readme_table_of_main_keys_shows_the_default_config() -> None:
    table = DOC_TEXTS["README.md"].split("the main keys:", 1)[1].split("\n\n", 2)[1]
    defaults = flatten(dataclasses.asdict(load_config(TWO_TOWER_YAML, RunConfig)))
    checked = 0
    for row in table.splitlines()[2:]:
        key_cell, default_cell = (c.strip() for c in row.strip("|").split("|")[:2])
        keys = re.findall(r"`([^`]+)`", key_cell)
        full = [keys[0].rsplit(".", 1)[0] + k if k.startswith(".") else k for k in keys]
        values = [_doc_value(v) for v in default_cell.split(", ")]
        assert len(full) == len(values), f"README main keys row {row!r}: {len(full)} keys, {len(values)} defaults"
        for key, shown in zip(full, values):
            actual = defaults[key]
            if isinstance(actual, (int, float)) and not isinstance(actual, bool):
                assert float(shown) == actual, f"README says {key} defaults to {shown}, the config has {actual}"
            else:
                assert shown == actual, f"README says {key} defaults to {shown!r}, the config has {actual!r}"
            checked += 1
    assert checked >= 15


def test_documented_paths_and_symbols_exist() -> None:
    """`recsys_cl/x.py`, `recsys_cl/x.py::name` and `recsys_cl.x.name` in the docs point at real code."""
    missing = []
    paths = _doc_matches(r"`((?:recsys_cl|pipelines|tests|docs|notebooks|data|\.ci)/[\w./-]*)(?:::(\w+))?")
    for where, m in paths:
        path, symbol = ROOT / m.group(1).rstrip("/"), m.group(2)
        if not path.exists():
            missing.append(f"{where}: {m.group(1)} does not exist")
        elif symbol and not re.search(rf"^\s*(def|class)\s+{symbol}\b|^{symbol}\s*[:=]", path.read_text(), re.M):
            missing.append(f"{where}: {m.group(1)} defines no {symbol}")
    dotted = _doc_matches(r"`((?:recsys_cl|pipelines)(?:\.\w+)+)")
    for where, m in dotted:
        parts = m.group(1).split(".")
        obj: Any = None
        for k in range(len(parts), 0, -1):  # the longest prefix that imports is the module
            try:
                obj = importlib.import_module(".".join(parts[:k]))
                break
            except ImportError:
                continue
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                missing.append(f"{where}: {m.group(1)} (no {attr} in {getattr(obj, '__name__', obj)})")
                break
            obj = getattr(obj, attr)
    assert len(paths) >= 40 and len(dotted) >= 15
    assert not missing, "the docs name code that is not there:\n" + "\n".join(missing)


PIPELINES = sorted(p.stem for p in (ROOT / "pipelines").glob("*.py") if p.stem not in {"__init__", "cli"})
EXTRA_NAMED = re.compile(r"\.\[([a-z_,]+)\]|`(\w+)`\s+extra\b")  # pip install -e '.[a,b]', the `x` extra


def test_named_extras_exist() -> None:
    """Every optional extra that the docs or a pipeline's --help names is one setup.cfg defines, so
    ``pip install -e '.[name]'`` installs something instead of warning that there is no such extra."""
    import configparser

    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    extras = set(setup["options.extras_require"])
    texts = {**DOC_TEXTS, **{f"python -m pipelines.{m} --help": help_text(m) for m in PIPELINES}}
    named = [(where, name) for where, text in texts.items() for m in EXTRA_NAMED.finditer(text)
             for name in (m.group(1) or m.group(2)).split(",")]
    assert len(named) >= 8
    unknown = [f"{where}: {name}" for where, name in named if name not in extras]
    assert not unknown, f"extras that setup.cfg does not define ({sorted(extras)}):\n" + "\n".join(unknown)


def test_help_examples_use_real_flags_and_keys() -> None:
    """The examples in each pipeline's --help pass the checks the docs' commands pass: a user copies
    them from there as often as from the README."""
    checked = 0
    for module in PIPELINES:
        body = help_text(module).split("\n\n", 1)[1]  # without the usage block and its KEY=VALUE
        block = "```\n" + "\n".join(line.strip() for line in body.splitlines()) + "\n```"
        for cmd in _commands_in(block, f"python -m pipelines.{module} --help"):
            test_documented_flags_exist(cmd)
            if cmd.module in CONFIG_CLASS and not cmd.output:
                test_documented_overrides_load(cmd)
            checked += 1
    assert checked >= 30
