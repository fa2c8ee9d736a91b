"""The capability module: detection from CPU flags and the STARSERVE_ISA override."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from starserve import hardware
from starserve.hardware import CpuCapabilities, _best_level


def _caps(isa: str, detected: str | None = None) -> CpuCapabilities:
    return CpuCapabilities("test CPU", "x86_64", isa, detected or isa, frozenset())


def test_levels_from_flags() -> None:
    avx2 = frozenset({"avx2", "fma", "sse4_2"})
    zen4 = avx2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"}
    sapphire = zen4 | {"amx_bf16", "amx_tile"}
    assert _best_level("x86_64", avx2) == "avx2"
    assert _best_level("x86_64", zen4) == "avx512_bf16"
    assert _best_level("x86_64", sapphire) == "amx_bf16"
    assert _best_level("x86_64", frozenset({"sse2"})) == "scalar"
    assert _best_level("aarch64", frozenset({"asimd"})) == "neon"


def test_has_is_monotone() -> None:
    avx2 = _caps("avx2")
    assert avx2.has("avx2") and avx2.has("scalar")
    assert not avx2.has("avx512") and not avx2.has("amx_bf16")
    assert not avx2.native_bf16_matmul
    assert _caps("avx512_bf16").native_bf16_matmul
    assert _caps("amx_bf16").has("avx512")
    with pytest.raises(ValueError):
        avx2.has("sse9")


@pytest.mark.parametrize(
    ("forced", "expected"), [("avx2", "avx2"), ("scalar", "scalar"), ("bogus", None)]
)
def test_override_only_lowers(
    monkeypatch: pytest.MonkeyPatch, forced: str, expected: str | None
) -> None:
    monkeypatch.setenv(hardware.ISA_ENV, forced)
    hardware.cpu.cache_clear()
    try:
        caps = hardware.cpu()
        assert caps.isa == (expected or caps.detected_isa)
        if expected not in (None, caps.detected_isa):
            assert caps.forced and "forced" in caps.describe()
    finally:
        hardware.cpu.cache_clear()


def test_result_tags_name_the_machine() -> None:
    tags = hardware.result_tags("float32")
    assert set(tags) == {"cpu", "isa", "dtype"} and tags["dtype"] == "float32"
    assert tags["isa"] in hardware.ISA_LEVELS and tags["cpu"]


def test_forced_level_caps_the_math_libraries_before_torch_loads() -> None:
    """STARSERVE_ISA=avx2 makes oneDNN, ATen and MKL behave as on an AVX2 CPU, in a fresh
    process that imports starserve first (as the CLI, the benches and the tests do)."""
    script = (
        "import os, starserve, torch\n"
        "print(os.environ.get('ONEDNN_MAX_CPU_ISA'), os.environ.get('MKL_ENABLE_INSTRUCTIONS'),"
        " torch.backends.cpu.get_cpu_capability())\n"
    )
    env = {**os.environ, hardware.ISA_ENV: "avx2"}
    for key in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        env.pop(key, None)
    env.pop("MKL_ENABLE_INSTRUCTIONS", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    if hardware.cpu().detected_isa in ("amx_bf16", "avx512_bf16", "avx512"):
        assert out.stdout.split() == ["AVX2", "AVX2", "AVX2"]
    else:  # nothing to lower: no caps set, torch reports what the CPU has
        assert out.stdout.split()[:2] == ["None", "None"]


def test_flags_and_dtype_follow_the_level() -> None:
    avx2 = _caps("avx2", detected="amx_bf16")
    assert avx2.compile_flags == ("-mavx2", "-mfma") and not avx2.bf16_weight_packing
    assert hardware.library_env(avx2)["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert hardware.auto_dtype(avx2) == "float32"
    native = _caps("avx512_bf16")
    assert native.compile_flags == ("-march=native",) and native.bf16_weight_packing
    assert hardware.library_env(native) == {} and hardware.auto_dtype(native) == "bfloat16"
    # A plain AVX2 CPU with avx_ne_convert (recent Intel cores) can pack bfloat16 in oneDNN.
    ne_convert = CpuCapabilities("t", "x86_64", "avx2", "avx2", frozenset({"avx_ne_convert"}))
    assert ne_convert.bf16_weight_packing and not _caps("avx2").bf16_weight_packing
    assert "slow" in hardware.startup_line("bfloat16") or hardware.cpu().native_bf16_matmul
