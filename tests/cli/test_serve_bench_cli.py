"""`starserve serve` / `starserve bench` reject bad input with one line and exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = [
    (["serve", "--model", "/no/such/model.gguf"], "--model /no/such/model.gguf: no such file"),
    (["serve", "--predictor", "/no/such/dir"], "--predictor /no/such/dir: no such file"),
    (["bench", "--dataset", "alpaca_eval", "--num-prompts", "0"], "--num-prompts must be >= 1"),
    (["bench", "--dataset", "alpaca_eval", "--goodput", "latency:5"], "--goodput 'latency:5'"),
    (
        ["bench", "--dataset", "alpaca_eval", "--endpoint", "/v1/embeddings"],
        "--endpoint /v1/embeddings",
    ),
]


@pytest.mark.parametrize(("args", "message"), CASES)
def test_bad_flags_give_one_line_error(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "starserve", *args], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in done.stderr


def test_help_explains_every_flag() -> None:
    for command in ("serve", "bench"):
        done = subprocess.run(
            [sys.executable, "-m", "starserve", command, "--help"], capture_output=True, text=True
        )
        assert done.returncode == 0
        assert "--ray-address" in done.stdout or "--goodput" in done.stdout
