"""`starserve workload list|describe` through the real CLI entry point."""

import csv
import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from starserve.cli.main import app
from starserve.paths import data_dir
from starserve.workload import list_workloads

runner = CliRunner()
SHIPPED_FILES = [
    i for i in list_workloads() if i.kind != "sampled" and not i.path.startswith("servegen")
]


def raw_rows(path: str) -> int:
    full = data_dir() / path
    if full.suffix == ".csv":
        with full.open(newline="") as f:
            return sum(1 for _ in csv.reader(f)) - 1
    return sum(1 for line in full.read_text().split("\n") if line.strip() and json.loads(line))


def printed_count(output: str) -> int:
    match = re.search(r"count\s*│\s*(\d+)", output)
    assert match, output
    return int(match.group(1))


def test_list_shows_every_workload() -> None:
    result = runner.invoke(app, ["workload", "list"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for info in list_workloads():
        assert info.name in result.output and info.path in result.output


@pytest.mark.parametrize("info", SHIPPED_FILES, ids=lambda i: i.name)
def test_describe_count_equals_raw_rows(info) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(app, ["workload", "describe", info.name])
    assert result.exit_code == 0, result.output
    assert printed_count(result.output) == raw_rows(info.path)


def test_describe_with_arrival_options() -> None:
    args = ["workload", "describe", "sharegpt", "--num-requests", "400", "--arrival", "gamma"]
    result = runner.invoke(app, [*args, "--rate", "4", "--cv", "2", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert printed_count(result.output) == 400
    rate = float(re.search(r"mean arrival rate \(req/s\)\s*│\s*([\d.]+)", result.output).group(1))  # type: ignore[union-attr]
    assert 2.5 < rate < 6.5
    assert "input tokens p99" in result.output and "output tokens max" in result.output


@pytest.mark.parametrize(
    "command", [[], ["workload"], ["workload", "list"], ["workload", "describe"]]
)
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_bad_path_exits_2_with_one_line_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "missing.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "starserve", "workload", "describe", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing.csv" in lines[0]
    assert "Traceback" not in proc.stderr


def test_cv_without_gamma_is_a_user_error() -> None:
    result = runner.invoke(app, ["workload", "describe", "sharegpt", "--rate", "2", "--cv", "3"])
    assert result.exit_code != 0
    assert "--cv applies only to --arrival gamma" in str(result.exception)
