"""The capability module: detection from CPU flags and the STARSERVE_ISA override."""

from __future__ import annotations

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
