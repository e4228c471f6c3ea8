"""deploy/: the systemd units, the environment file, the TOML example and the crontab line
name real commands, options and settings; `systemd-analyze verify` accepts the units."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from apscheduler.triggers.cron import CronTrigger

from etl.config import ACCESS_KEY_FILE_ENV, CONFIG_ENV, ENV_PREFIX, KEYS, load_settings
from tests.procs import run_etl

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
README = DEPLOY.parent / "README.md"
BINARY = "/opt/numbers-etl/.venv/bin/numbers-etl"
UNITS = ("numbers-etl-sync.service", "numbers-etl-schedule.service")


def directives(path: Path) -> list[tuple[str, str]]:
    """(key, value) of every line of a unit file, comments left out."""
    out = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.append((key.strip(), value.strip()))
    return out


def directive(path: Path, key: str) -> list[str]:
    return [v for k, v in directives(path) if k == key]


def etl_args(command: str) -> list[str]:
    """The arguments after the numbers-etl binary in a command line."""
    words = shlex.split(command)
    start = words.index(BINARY)
    end = next((i for i, w in enumerate(words) if w.startswith((">", "2>"))), len(words))
    return words[start + 1 : end]


@pytest.mark.parametrize("unit", UNITS)
def test_execstart_runs_a_real_command_with_real_options(unit: str, tmp_path: Path) -> None:
    (command,) = directive(DEPLOY / unit, "ExecStart")
    args = etl_args(command)
    # --help after every option: click still parses (and would refuse) each of them
    result = run_etl([*args, "--help"], {}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ")


@pytest.mark.parametrize("unit", UNITS)
def test_units_take_settings_from_a_file_and_the_key_from_a_credential(unit: str) -> None:
    path = DEPLOY / unit
    assert directive(path, "EnvironmentFile") == ["/etc/numbers-etl/numbers-etl.env"]
    assert directive(path, "LoadCredential") == ["access_key:/etc/numbers-etl/access_key"]
    assert directive(path, "Environment") == [f"{ACCESS_KEY_FILE_ENV}=%d/access_key"]
    assert "--log-format json" in directive(path, "ExecStart")[0]
    assert directive(path, "KillSignal") == ["SIGTERM"]


def test_sync_unit_is_oneshot_and_tolerates_lock_and_stop() -> None:
    path = DEPLOY / "numbers-etl-sync.service"
    assert directive(path, "Type") == ["oneshot"]
    assert directive(path, "SuccessExitStatus") == ["75 143"]
    assert directive(DEPLOY / "numbers-etl-sync.timer", "Unit") == ["numbers-etl-sync.service"]
    schedule = DEPLOY / "numbers-etl-schedule.service"
    assert directive(schedule, "Restart") == ["on-failure"]
    assert directive(schedule, "RestartPreventExitStatus") == ["2"]
    # `systemctl stop` (SIGTERM): the scheduler exits 143, a clean stop, not a failure
    assert directive(schedule, "SuccessExitStatus") == ["143"]


def test_metrics_file_directory_is_a_state_directory() -> None:
    path = DEPLOY / "numbers-etl-sync.service"
    (command,) = directive(path, "ExecStart")
    args = etl_args(command)
    metrics = Path(args[args.index("--metrics-file") + 1])
    (state,) = directive(path, "StateDirectory")
    assert str(metrics.parent.relative_to("/var/lib")) in state.split()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # The units name /opt/numbers-etl; verify needs an executable there, so point them at
    # this installation's numbers-etl instead.
    installed = Path(sys.executable).parent / "numbers-etl"
    assert installed.exists()
    names = [*UNITS, "numbers-etl-sync.timer"]
    for name in names:
        text = (DEPLOY / name).read_text().replace(BINARY, str(installed))
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / n) for n in names)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    problems = [line for line in result.stderr.splitlines() if "numbers-etl" in line]
    assert problems == []


def test_timer_calendar_is_valid() -> None:
    (calendar,) = directive(DEPLOY / "numbers-etl-sync.timer", "OnCalendar")
    assert calendar == "*-*-* 00/6:00:00 UTC"
    if shutil.which("systemd-analyze"):
        result = subprocess.run(
            ["systemd-analyze", "calendar", calendar], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def test_environment_file_is_a_valid_configuration(tmp_path: Path) -> None:
    env = read_env_file(DEPLOY / "numbers-etl.env")
    assert set(env) <= {ENV_PREFIX + k.upper() for k in KEYS}
    assert f"{ENV_PREFIX}ACCESS_KEY" not in env  # the key comes from the credential
    key = tmp_path / "access_key"
    key.write_text("a-key\n")
    settings = load_settings(env={**env, ACCESS_KEY_FILE_ENV: str(key)})
    settings.require("access_key", "organization_id", "countries")
    assert settings.schedule == "0 */6 * * *"


def test_toml_example_is_a_valid_configuration(tmp_path: Path) -> None:
    settings = load_settings(env={}, config_path=DEPLOY / "config.toml")
    assert settings.countries == ("US", "NL", "GB")
    assert dict(settings.prefixes) == {}  # whole countries: a copy syncs every number
    assert settings.access_key is None
    # the commented example is valid as it stands, once uncommented
    text = (DEPLOY / "config.toml").read_text()
    uncommented = text.replace("#[prefixes]", "[prefixes]").replace("#US = ", "US = ")
    path = tmp_path / "config.toml"
    path.write_text(uncommented)
    example = load_settings(env={}, config_path=path)
    assert dict(example.prefixes) == {"US": ("+1212", "+1646")}


def test_crontab_line(tmp_path: Path) -> None:
    lines = [
        line
        for line in (DEPLOY / "crontab").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(lines) == 1
    fields = lines[0].split(maxsplit=5)
    CronTrigger.from_crontab(" ".join(fields[:5]), timezone="UTC")
    command = fields[5]
    assignments = dict(re.findall(r"\b(NUMBERS_ETL_\w+)=(\S+)", command))
    assert set(assignments) == {CONFIG_ENV, ACCESS_KEY_FILE_ENV}
    result = run_etl([*etl_args(command), "--help"], {}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert lines[0] in README.read_text()  # the README shows the same line


def readme_setup_commands() -> list[list[str]]:
    """The simple commands (split at && and ;) of the sh blocks of the README's "Running in
    production" section, each as its words."""
    section = README.read_text().split("## Running in production", 1)[1].split("\n## ", 1)[0]
    out = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL):
        for line in block.splitlines():
            for command in re.split(r"&&|;", line):
                words = shlex.split(command, comments=True)
                if words:
                    out.append(words)
    return out


def created_directories() -> dict[str, str | None]:
    """Directory -> owner of every `sudo install -d` in the README's production setup."""
    out: dict[str, str | None] = {}
    for words in readme_setup_commands():
        if words[:3] != ["sudo", "install", "-d"]:
            continue
        owner, rest = None, words[3:]
        while rest and rest[0].startswith("-"):
            if rest[0] == "-o":
                owner = rest[1]
            rest = rest[2:] if rest[0] in ("-o", "-g", "-m") else rest[1:]
        out.update(dict.fromkeys(rest, owner))
    return out


def crontab_command() -> str:
    (line,) = [
        line
        for line in (DEPLOY / "crontab").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return line.split(maxsplit=5)[5]


def test_readme_setup_creates_every_directory_the_service_user_needs() -> None:
    command = crontab_command()
    args = etl_args(command)
    working = re.search(r"\bcd (\S+)", command)
    log_file = re.search(r">>\s*(\S+)", command)
    assert working is not None
    assert log_file is not None
    needed = {
        working.group(1),  # also where `db upgrade` runs and the units' WorkingDirectory
        str(Path(args[args.index("--metrics-file") + 1]).parent),
        str(Path(log_file.group(1)).parent),
    }
    created = created_directories()
    for directory in sorted(needed):
        assert created.get(directory) == "numbers-etl", f"README does not create {directory}"
    for unit in UNITS:
        (working_directory,) = directive(DEPLOY / unit, "WorkingDirectory")
        assert working_directory in created


def test_readme_lets_the_cron_user_read_its_key_and_config() -> None:
    assignments = dict(re.findall(r"\b(NUMBERS_ETL_\w+)=(\S+)", crontab_command()))
    commands = [" ".join(words) for words in readme_setup_commands()]
    config = assignments[CONFIG_ENV]
    assert f"sudo install -m 0640 -g numbers-etl deploy/config.toml {config}" in commands
    key = assignments[ACCESS_KEY_FILE_ENV]
    assert f"sudo chgrp numbers-etl {key}" in commands
    assert f"sudo chmod 0640 {key}" in commands
    assert "sudo crontab -u numbers-etl deploy/crontab" in commands


def test_readme_migrates_the_database_the_units_and_cron_use() -> None:
    # `db upgrade` must read the settings the sync will read, or it migrates a default SQLite
    # file in the working directory while the configured database stays empty
    upgrades = [w for w in readme_setup_commands() if w[-3:] == [BINARY, "db", "upgrade"]]
    assert len(upgrades) == 2, upgrades
    systemd, cron = upgrades
    for unit in UNITS:
        (env_file,) = directive(DEPLOY / unit, "EnvironmentFile")
        assert f"--property=EnvironmentFile={env_file}" in systemd
        (working_directory,) = directive(DEPLOY / unit, "WorkingDirectory")
        assert f"--working-directory={working_directory}" in systemd
    assert systemd[:2] == ["sudo", "systemd-run"]
    assert "--uid=numbers-etl" in systemd
    assignments = dict(re.findall(r"\b(NUMBERS_ETL_\w+)=(\S+)", crontab_command()))
    assert f"{CONFIG_ENV}={assignments[CONFIG_ENV]}" in cron
    assert cron[:3] == ["sudo", "-u", "numbers-etl"]
