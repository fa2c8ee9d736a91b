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
    def bf16_weight_packing(self) -> bool:
        """oneDNN packs bfloat16 weights only with AVX512 bw/vl/dq or avx_ne_convert (it raises
        `bf16 path needs ...` otherwise); a forced level caps oneDNN too (`library_env`)."""
        if self.has("avx512"):
            return True
        return self.has("avx2") and not self.forced and "avx_ne_convert" in self.flags

    @property
    def forced(self) -> bool:
        return self.isa != self.detected_isa

    @property
    def compile_flags(self) -> tuple[str, ...]:
        """C compiler flags for the native kernels at this level: the CPU's own (-march=native)
        unless a lower level is forced, then exactly that level's instruction sets."""
        if not self.forced and self.isa != "scalar":
            return ("-march=native",)
        return _LEVEL_FLAGS.get(self.isa, ())

    def describe(self) -> str:
        forced = f", forced by {ISA_ENV} (CPU has {self.detected_isa})" if self.forced else ""
        return f"{self.model_name} [{self.arch}, isa {self.isa}{forced}]"


# Compiler flags of a forced level (the code then runs on any CPU of that level).
_LEVEL_FLAGS: dict[str, tuple[str, ...]] = {
    "avx512_bf16": ("-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                    "-mavx512bf16"),
    "avx512": ("-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"),
    "avx2": ("-mavx2", "-mfma"),
    "neon": (),
    "scalar": (),
}  # fmt: skip

# What the math libraries are told under a forced level, so they behave as on such a CPU:
# oneDNN (bfloat16 GEMM, packing), ATen's own vector kernels, MKL (float32 GEMM).
_LIBRARY_ENV: dict[str, dict[str, str]] = {
    "avx512_bf16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16", "ATEN_CPU_CAPABILITY": "avx512",
                    "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
    "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "ATEN_CPU_CAPABILITY": "avx512",
               "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "scalar": {"ONEDNN_MAX_CPU_ISA": "SSE41", "ATEN_CPU_CAPABILITY": "default",
               "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}  # fmt: skip


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


def library_env(caps: CpuCapabilities) -> dict[str, str]:
    """Environment that caps oneDNN, ATen and MKL at a forced level (empty when not forced)."""
    if not caps.forced:
        return {}
    env = dict(_LIBRARY_ENV.get(caps.isa, {}))
    if "ONEDNN_MAX_CPU_ISA" in env:
        env["DNNL_MAX_CPU_ISA"] = env["ONEDNN_MAX_CPU_ISA"]  # older oneDNN spelling
    return env


def apply_library_env() -> None:
    """Export `library_env` into this process (and so into the Ray workers it starts).

    The libraries read these once, when torch is first imported: `starserve/__init__.py` calls
    this before anything imports torch. Values the user set already are kept."""
    env = library_env(cpu())
    if not env:
        return
    import sys

    late = "torch" in sys.modules and any(os.environ.get(k) != v for k, v in env.items())
    for key, value in env.items():
        os.environ.setdefault(key, value)
    if late:
        log.warning("%s set after torch was imported: the math libraries keep their own ISA",
                    ISA_ENV)  # fmt: skip


def torch_capability() -> str:
    """PyTorch's own report of its vector level (AVX512, AVX2, DEFAULT...), as a cross-check."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def auto_dtype(caps: CpuCapabilities | None = None) -> str:
    """`--dtype auto`: bfloat16 where the CPU multiplies it natively, float32 otherwise."""
    return "bfloat16" if (caps or cpu()).native_bf16_matmul else "float32"


DTYPE_CHOICES = ("auto", "float32", "bfloat16")
DTYPE_HELP = (
    "auto (bfloat16 where the CPU has native bfloat16 matrix support: AMX or AVX512-BF16; "
    "float32 otherwise), float32 (bit-exact with transformers) or bfloat16."
)


def resolve_dtype(requested: str) -> str:
    """`auto` -> `auto_dtype()`; float32/bfloat16 as given; anything else a one-line error."""
    if requested not in DTYPE_CHOICES:
        from starserve.errors import StarserveError

        raise StarserveError(
            f"--dtype must be one of {', '.join(DTYPE_CHOICES)}, got {requested!r}"
        )
    return auto_dtype() if requested == "auto" else requested


DEVICES = ("cpu", "cuda")


def check_device(device: str) -> str:
    """The engine device for `--device`: cpu, or cuda when PyTorch sees a GPU; anything else,
    or cuda without a GPU, is a one-line error at start-up."""
    from starserve.errors import StarserveError

    if device not in DEVICES:
        raise StarserveError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            build = f"torch {torch.__version__}"
            raise StarserveError(f"--device cuda: no CUDA GPU is visible to PyTorch ({build})")
    return device


def startup_line(dtype: str, device: str = "cpu") -> str:
    """What the CLI prints at start-up: the CPU, its ISA level and the dtype chosen for it."""
    caps = cpu()
    note = ""
    if dtype == "bfloat16" and not caps.native_bf16_matmul:
        note = " (no native bfloat16 on this CPU: correct but slow; float32 is faster here)"
    where = ""
    if device != "cpu":
        import torch

        where = f", device {device} ({torch.cuda.get_device_name()})"
        note = ""
    # PyTorch's own report beside ours: a mismatch (say torch AVX2 on an avx512 level) shows.
    return f"cpu: {caps.describe()}, torch {torch_capability()}, dtype {dtype}{note}{where}"


def result_tags(dtype: str | None = None) -> dict[str, str]:
    """The `cpu`, `isa` (and `dtype`) keys every bench RESULT line carries."""
    caps = cpu()
    tags = {"cpu": caps.model_name, "isa": caps.isa}
    if dtype is not None:
        tags["dtype"] = dtype
    return tags
