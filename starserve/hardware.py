"""The one place that knows what this machine's CPU can do.

Every fast path (native kernels, weight packing, the bfloat16 default) asks this module; nothing
else reads /proc/cpuinfo or probes instructions. The answer comes from the OS (the kernel's CPU
flags, which also reflect what the hypervisor exposes), cross-checked with PyTorch's own report.

`STARSERVE_ISA` forces a lower level than the CPU has (`avx2` disables every AVX-512 and AMX
path; `scalar` every vector path), so a machine with AMX proves the portable path too. It only
ever lowers: asking for more than the CPU has is ignored with a warning.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# From most to least capable; each level implies the ones after it (on x86-64).
ISA_LEVELS = ("amx_bf16", "avx512_bf16", "avx512", "avx2", "neon", "scalar")
ISA_ENV = "STARSERVE_ISA"

# Kernel flag names (/proc/cpuinfo) that each x86 level needs, all of them.
_X86_FLAGS = {
    "amx_bf16": ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx512bw", "avx512vl"),
    "avx512_bf16": ("avx512_bf16", "avx512f", "avx512bw", "avx512vl", "avx512dq"),
    "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
    "avx2": ("avx2", "fma"),
}


@dataclass(frozen=True, slots=True)
class CpuCapabilities:
    """What the CPU offers, after any `STARSERVE_ISA` override."""

    model_name: str
    arch: str  # platform.machine(): x86_64, aarch64, ...
    isa: str  # the best usable level of ISA_LEVELS
    detected_isa: str  # the best level the CPU itself has (before the override)
    flags: frozenset[str]

    def has(self, level: str) -> bool:
        """True when `level` (one of ISA_LEVELS) is usable: at or below the effective level."""
        if level not in ISA_LEVELS:
            raise ValueError(f"unknown ISA level {level!r}; expected one of {ISA_LEVELS}")
        if level == "scalar":
            return True
        if level == "neon":
            return self.isa == "neon"
        if self.isa in ("neon", "scalar"):
            return False
        return ISA_LEVELS.index(level) >= ISA_LEVELS.index(self.isa)

    @property
    def native_bf16_matmul(self) -> bool:
        """Native bfloat16 dot products (AMX or AVX512-BF16): where bfloat16 beats float32."""
        return self.has("avx512_bf16")

    @property
    def forced(self) -> bool:
        return self.isa != self.detected_isa

    def describe(self) -> str:
        forced = f", forced by {ISA_ENV} (CPU has {self.detected_isa})" if self.forced else ""
        return f"{self.model_name} [{self.arch}, isa {self.isa}{forced}]"


def _read_cpuinfo() -> tuple[str, frozenset[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU", frozenset()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "CPU part") and not model:
            model = value.strip()
        elif key in ("flags", "Features"):
            flags.update(value.split())
    return model or platform.processor() or "unknown CPU", frozenset(flags)


def _best_level(arch: str, flags: frozenset[str]) -> str:
    if arch in ("aarch64", "arm64"):
        return "neon" if ("asimd" in flags or "neon" in flags or not flags) else "scalar"
    for level in ("amx_bf16", "avx512_bf16", "avx512", "avx2"):
        if all(flag in flags for flag in _X86_FLAGS[level]):
            return level
    return "scalar"


def _apply_override(detected: str) -> str:
    forced = os.environ.get(ISA_ENV, "").strip().lower()
    if not forced:
        return detected
    if forced not in ISA_LEVELS:
        log.warning("%s=%s ignored: expected one of %s", ISA_ENV, forced, ", ".join(ISA_LEVELS))
        return detected
    probe = CpuCapabilities("", "", detected, detected, frozenset())
    if forced != "scalar" and not probe.has(forced):
        log.warning("%s=%s ignored: this CPU only has %s", ISA_ENV, forced, detected)
        return detected
    return forced


@functools.cache
def cpu() -> CpuCapabilities:
    """This machine's CPU capabilities (read once per process)."""
    model, flags = _read_cpuinfo()
    arch = platform.machine()
    detected = _best_level(arch, flags)
    return CpuCapabilities(model, arch, _apply_override(detected), detected, flags)


def result_tags(dtype: str | None = None) -> dict[str, str]:
    """The `cpu`, `isa` (and `dtype`) keys every bench RESULT line carries."""
    caps = cpu()
    tags = {"cpu": caps.model_name, "isa": caps.isa}
    if dtype is not None:
        tags["dtype"] = dtype
    return tags
