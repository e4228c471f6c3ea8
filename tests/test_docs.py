"""The README and CHANGELOG against the code: every command has help and a README entry,
every command line the README shows parses (and the safe ones run for real against the
simulator), the configuration table lists every key with its real default, the TOML example
loads, and the sample SQL runs on each database."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from sqlalchemy import Engine

from etl import sync as sync_module
from etl.cli import cli
from etl.config import KEYS, PARSERS, Settings, load_settings
from etl.simulator import Simulator, SyntheticStock
from etl.sync import Sync
from tests.conftest import make_settings, sim_env
from tests.procs import invoke, sqlite_url

__all__ = ["sqlite_url"]  # a fixture

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CHANGELOG = (ROOT / "CHANGELOG.md").read_text()
QUICK_START = (
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/numbers-etl demo",
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/pytest",
)
LONG_RUNNING = {"schedule", "simulator"}


def commands(
    group: click.Group = cli, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command of the tree with its path, groups included."""
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


def fenced(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def shown_commands() -> list[list[str]]:
    """The arguments of every `numbers-etl` command in the README's sh blocks, in order: the
    first word of a simple command (after VAR=value and sudo's options) is numbers-etl."""
    out = []
    for block in fenced("sh"):
        for line in block.splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            tokens = list(lexer)
            simple: list[list[str]] = [[]]
            for token in tokens:
                if token and set(token) <= set(";&|<>()"):
                    simple.append([])
                else:
                    simple[-1].append(token)
            for words in simple:
                while words and re.match(r"^[A-Z_]+=", words[0]):
                    words = words[1:]
                if words and words[0] == "sudo":
                    words = words[1:]
                    while words and words[0].startswith("-"):
                        words = words[2:] if words[0] in ("-u", "-g") else words[1:]
                if words and re.fullmatch(r"(\S*/bin/)?numbers-etl", words[0]):
                    out.append(words[1:])
    return out


def env_line(words: list[str]) -> bool:
    return any("/etc/" in w or "db.internal" in w or "/var/lib" in w for w in words)


# --- commands and their documentation -----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "command"), list(commands()), ids=[" ".join(p) for p, _ in commands()]
)
def test_every_command_has_help_and_a_readme_entry(
    path: tuple[str, ...], command: click.Command
) -> None:
    assert (command.help or "").strip(), f"{' '.join(path)} has no help text"
    for param in command.params:
        if isinstance(param, click.Option) and param.name not in ("help", "version"):
            assert (param.help or "").strip(), f"{' '.join(path)} {param.opts[0]} has no help"
    if not isinstance(command, click.Group):
        shown = [" ".join(args) for args in shown_commands()]
        name = " ".join(path)
        assert any(s == name or s.startswith(name + " ") for s in shown), (
            f"the README shows no `numbers-etl {name}` command"
        )
    assert f"### {path[0]}" in README


def test_help_exits_0_for_every_command() -> None:
    for path, _ in commands():
        result = invoke({}, *path, "--help")
        assert result.exit_code == 0, (path, result.output)
        assert result.stdout.startswith(f"Usage: {' '.join(('numbers-etl', *path))}")


def test_quick_start_commands_are_verbatim_and_used_by_ci_and_make() -> None:
    for command in QUICK_START:
        assert f"```sh\n{command}\n```" in README
    assert QUICK_START[1] in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "demo:" in makefile
    assert "test:" in makefile
    assert "`make demo`" in README
    assert "`make test`" in README


@pytest.mark.parametrize("args", shown_commands(), ids=lambda a: " ".join(a) or "(none)")
def test_every_command_line_in_the_readme_parses(args: list[str]) -> None:
    # --help after every option: click parses (and would refuse) each of them first
    result = invoke({}, *args, "--help")
    assert result.exit_code == 0, result.output


def test_readme_commands_run_against_the_simulator(
    simulator: Simulator, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"  # the demo's numbers_stock.sqlite goes here, not into sqlite_url
    work.mkdir()
    monkeypatch.chdir(work)
    env = sim_env(simulator, sqlite_url)
    done: list[list[str]] = []
    for args in shown_commands():
        long_running = bool(set(args) & LONG_RUNNING) and "--help" not in args
        if args in done or env_line(args) or long_running:
            continue
        done.append(args)
        result = invoke(env, *args)
        assert result.exit_code == 0, (args, result.output)
    assert ["sync"] in done
    assert ["status", "--max-age", "2d"] in done
    assert ["demo"] in done


# --- configuration -------------------------------------------------------------------------


def config_rows() -> dict[str, list[str]]:
    rows = {}
    for line in README.splitlines():
        match = re.match(r"^\| `([a-z_]+)` \|(.*)\|$", line)
        if match and match.group(1) in KEYS:
            rows[match.group(1)] = [c.strip() for c in re.split(r"(?<!\\)\|", match.group(2))]
    return rows


def test_configuration_table_lists_every_key_with_its_env_name_and_default() -> None:
    rows = config_rows()
    assert list(rows) == list(KEYS)
    defaults = Settings()
    for key, (kind, env, default, meaning) in rows.items():
        assert kind
        assert meaning
        assert env.startswith(f"`NUMBERS_ETL_{key.upper()}`")
        if default.startswith("`"):
            assert PARSERS[key](default.strip("`")) == getattr(defaults, key), key
        else:
            assert getattr(defaults, key) in (None, (), {}), key
    assert "NUMBERS_ETL_ACCESS_KEY_FILE" in README
    assert "NUMBERS_ETL_CONFIG" in README
    assert "no `--access-key` flag" in README
    assert "`US=+1212\\|+1646;NL=+3120`" in README


def test_readme_toml_example_loads(tmp_path: Path) -> None:
    (example,) = fenced("toml")
    path = tmp_path / "numbers-etl.toml"
    path.write_text(example)
    settings = load_settings(env={}, config_path=path)
    assert settings.countries == ("US", "NL", "GB")
    assert dict(settings.prefixes) == {"US": ("+1212", "+1646")}
    assert settings.removal_confirmations == 2


def test_readme_environment_example_matches_the_toml_one(tmp_path: Path) -> None:
    block = next(b for b in fenced("sh") if "export NUMBERS_ETL_PREFIXES" in b)
    env = dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1)
        for line in block.splitlines()
        if line.startswith("export ")
    )
    (example,) = fenced("toml")
    path = tmp_path / "numbers-etl.toml"
    path.write_text(example)
    from_env = load_settings(env=env)
    from_file = load_settings(env={}, config_path=path)
    for key in env:
        name = key.removeprefix("NUMBERS_ETL_").lower()
        assert getattr(from_env, name) == getattr(from_file, name), name


def test_exit_codes_table() -> None:
    codes = {
        sync_module.EXIT_OK: "0",
        sync_module.EXIT_FAILED: "1",
        sync_module.EXIT_CONFIG: "2",
        sync_module.EXIT_LOCKED: "75",
        sync_module.EXIT_SIGTERM: "143",
    }
    for code, text in codes.items():
        assert str(code) == text
        assert re.search(rf"^\| {text} \| \S", README, flags=re.MULTILINE), text


# --- sample SQL ----------------------------------------------------------------------------

DIALECTS = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mysql": "MySQL/MariaDB"}


def test_sample_sql_runs_on_each_database(
    simulator: Simulator, stock: SyntheticStock, db_url: str, engine: Engine
) -> None:
    Sync(make_settings(simulator, db_url)).run()
    for number in stock.numbers("NL")[:3]:
        stock.remove(number)
    stock.set_price(stock.numbers("NL")[5], 1230000, -6)
    Sync(make_settings(simulator, db_url)).run()
    dialect = DIALECTS[engine.dialect.name]
    ran = 0
    for block in fenced("sql"):
        marker = re.match(r"-- (SQLite|PostgreSQL|MySQL/MariaDB)\b", block)
        if marker and marker.group(1) != dialect:
            continue
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(block.strip().rstrip(";")).all()
        ran += 1
        if "FROM v_daily_availability" in block or "FROM v_removed_numbers" in block:
            assert rows, block
    assert ran == 5


# --- changelog -----------------------------------------------------------------------------


def test_changelog_is_keep_a_changelog_with_an_unreleased_section() -> None:
    assert CHANGELOG.startswith("# Changelog\n")
    assert "https://keepachangelog.com/" in CHANGELOG
    assert "\n## [Unreleased]\n" in CHANGELOG
    unreleased = CHANGELOG.split("## [Unreleased]", 1)[1]
    assert "\n### Added\n" in unreleased
    for path, _ in commands():
        assert f"`numbers-etl {path[0]}" in unreleased or f"`{path[-1]}" in unreleased, path
