"""Start-up tells the truth: the CPU, ISA and dtype are printed; bad --dtype/--device values and
instances whose engine cannot step stop `starserve` with one line, before anything serves."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import torch

from starserve.model.loader import resolve_hf_dir


def _run(args: list[str], timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "starserve", *args],
        capture_output=True, text=True, timeout=timeout_s, env={**os.environ},
    )  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_bad_dtype_and_device_are_one_line_errors() -> None:
    cases = [
        (["model", "generate", "hi", "--dtype", "float16"], "--dtype must be one of auto"),
        (["serve", "--dtype", "int8"], "--dtype must be one of auto"),
        (["model", "generate", "hi", "--device", "tpu"], "--device must be one of cpu, cuda"),
    ]
    if not torch.cuda.is_available():
        cases.append((["model", "generate", "hi", "--device", "cuda"], "no CUDA GPU is visible"))
        cases.append((["serve", "--device", "cuda"], "no CUDA GPU is visible"))
    for args, message in cases:
        done = _run(args, timeout_s=60)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("error: ")
        assert message in done.stderr and "Traceback" not in done.stderr


def test_serve_fails_at_start_up_when_an_engine_cannot_step(tmp_path: Path) -> None:
    """A model folder whose context length (1 token) leaves no room to generate loads fine,
    but no request can run: every instance's warm-up step fails and `serve` exits 2 with the
    reason of the first to report (either may be first) in its last line, instead of reporting
    healthy and failing every request."""
    _, folder = resolve_hf_dir(None)
    broken = tmp_path / "one-token-model"
    broken.mkdir()
    for item in folder.iterdir():
        if item.name != "config.json":
            (broken / item.name).symlink_to(item)
    config = json.loads((folder / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1}))
    args = ["serve", "--model", str(broken), "--prefill", "1", "--decode", "1", "--no-predictor"]
    done = _run([*args, "--port", str(_free_port()), "--dtype", "float32", "--kv-blocks", "16"])
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert re.match(
        r"error: an instance failed to start: instance [01]: the engine cannot run", last
    )
    assert "max_model_len" in last
    assert "cpu: " in done.stderr and "dtype float32" in done.stderr  # the start-up line
