"""Native CPU kernels: C sources in `kernels/`, compiled on first use and loaded with ctypes.

- `decode_attention` reads each sequence's K/V blocks where they lie in the paged cache instead
  of gathering them into a contiguous copy every layer (see docs/engine.md);
- `small_linear` is the matrix-vector product of a batch of 1-2 decode tokens in bfloat16,
  where the library GEMM is slower than reading the weights once;
- `add_rms_norm` and `silu_mul` do a layer's element-wise work in one call each (bfloat16 and
  float32), where PyTorch dispatches five to eight small operators.

They are built with the system C compiler (`CC`, else `cc`) into `cache/native/` with the flags
`starserve.hardware` chooses for the ISA level (`-march=native`, or exactly `-mavx2 -mfma` under
`STARSERVE_ISA=avx2`), keyed on the sources, the flags, the level and the CPU, so a checkout
moved to another machine (or run at another level) rebuilds. Each kernel has vector paths for
AVX-512 (16 lanes) and AVX2+FMA (8 lanes) and a scalar fallback; the compiler flags pick one. Without a compiler, or with `STARSERVE_NATIVE=0`, the engine keeps the
PyTorch path and says so once.

The library links OpenMP by its soname (`libgomp.so.1`); PyTorch has loaded its own copy under
that name already, so the kernel's threads are PyTorch's threads and the two never fight.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from starserve.hardware import cpu
from starserve.model.packing import PackedWeight
from starserve.paths import cache_dir

logger = logging.getLogger(__name__)

KERNELS_DIR = Path(__file__).resolve().parent / "kernels"
SOURCES = tuple(
    KERNELS_DIR / name for name in ("decode_attention.c", "small_linear.c", "elementwise.c")
)
HEADER = KERNELS_DIR / "numerics.h"  # bfloat16 conversions and exp shared by the sources
SMALL_LINEAR_MAX_ROWS = 2  # beyond 2 rows oneDNN's bfloat16 GEMM is as fast (measured)
BASE_FLAGS = ("-O3", "-fopenmp", "-ffp-contract=off", "-shared", "-fPIC")
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}

_i64, _ptr = ctypes.c_int64, ctypes.c_void_p
_ATTENTION_SIGNATURE: list[Any] = (
    [_ptr, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _i64, _i64, _ptr]
    + [_i64] * 4
    + [ctypes.c_float, ctypes.c_int, ctypes.c_int]
)
_LINEAR_SIGNATURE: list[Any] = [
    _ptr,
    _i64,
    _ptr,
    _ptr,
    _ptr,
    _i64,
    _i64,
    _i64,
    ctypes.c_int,
    ctypes.c_int,
]


def compile_flags() -> tuple[str, ...]:
    """The full compiler flags for this process's ISA level (`hardware.cpu().compile_flags`)."""
    return (*BASE_FLAGS, *cpu().compile_flags)


def _build(output: Path, flags: tuple[str, ...]) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC)")
    output.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: several Ray workers may build at once.
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        partial = Path(tmp) / output.name
        subprocess.run(
            [compiler, *flags, "-o", str(partial), *map(str, SOURCES), "-lm"],
            check=True,
            capture_output=True,
            text=True,
        )
        os.replace(partial, output)


@functools.cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("STARSERVE_NATIVE", "1") == "0":
        return None
    caps, flags = cpu(), compile_flags()
    key = hashlib.sha256()
    for part in (*(p.read_bytes() for p in (*SOURCES, HEADER)), " ".join(flags).encode()):
        key.update(part)
    key.update(f"{caps.isa}\n{caps.model_name}\n{' '.join(sorted(caps.flags))}".encode())
    name = f"starserve_kernels-{caps.isa}-{key.hexdigest()[:16]}.so"
    library_path = cache_dir() / "native" / name
    try:
        if not library_path.exists():
            _build(library_path, flags)
        library = ctypes.CDLL(str(library_path))
    except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or err
        logger.warning("native kernels unavailable, using PyTorch: %s", detail)
        return None
    library.decode_attention.argtypes = _ATTENTION_SIGNATURE
    library.decode_attention.restype = ctypes.c_int
    library.small_linear.argtypes = _LINEAR_SIGNATURE
    library.small_linear.restype = ctypes.c_int
    library.add_rms_norm.argtypes = [
        _ptr,
        _ptr,
        _ptr,
        _ptr,
        _i64,
        _i64,
        ctypes.c_float,
        ctypes.c_int,
    ]
    library.add_rms_norm.restype = None
    library.silu_mul.argtypes = [_ptr, _ptr, _i64, _i64, ctypes.c_int]
    library.silu_mul.restype = None
    library.add_rms_norm_f32.argtypes = [_ptr, _ptr, _ptr, _ptr, _i64, _i64, ctypes.c_float]
    library.add_rms_norm_f32.restype = None
    library.silu_mul_f32.argtypes = [_ptr, _ptr, _i64, _i64]
    library.silu_mul_f32.restype = None
    library.vector_lanes.restype = ctypes.c_int
    return library


def vector_lanes() -> int:
    """Lanes of the vector path the built kernels take (16 AVX-512, 8 AVX2, 1 scalar; 0 = not
    built): what `hardware`'s level chose, as compiled."""
    library = _library()
    return 0 if library is None else int(library.vector_lanes())


def _cpu_library(*tensors: torch.Tensor) -> ctypes.CDLL | None:
    """The kernels, when every tensor is a contiguous CPU tensor of one of their dtypes (all
    the same) and they are built."""
    dtype = tensors[0].dtype
    if dtype in DTYPE_CODES and all(
        t.dtype == dtype and t.is_contiguous() and t.device.type == "cpu" for t in tensors
    ):
        return _library()
    return None


def add_rms_norm(
    h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """h += delta in place (when given); returns weight * rmsnorm(h), as `RMSNorm` computes it."""
    operands = (h, weight) if delta is None else (h, delta, weight)
    library = _cpu_library(*operands)
    if library is None or h.dim() != 2:
        if delta is not None:
            h.add_(delta)
        x32 = h.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        return weight * x32.to(h.dtype)
    out = torch.empty_like(h)
    delta_ptr = None if delta is None else delta.data_ptr()
    if h.dtype == torch.float32:
        library.add_rms_norm_f32(
            h.data_ptr(), delta_ptr, weight.data_ptr(), out.data_ptr(), h.shape[0], h.shape[1], eps
        )
        return out
    library.add_rms_norm(
        h.data_ptr(), delta_ptr, weight.data_ptr(), out.data_ptr(), h.shape[0], h.shape[1], eps,
        torch.get_num_threads(),
    )  # fmt: skip
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of the fused [M, 2I] gate|up product."""
    library = _cpu_library(gate_up)
    if library is None or gate_up.dim() != 2:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up
    rows, width = gate_up.shape
    out = torch.empty(rows, width // 2, dtype=gate_up.dtype)
    if gate_up.dtype == torch.float32:
        library.silu_mul_f32(gate_up.data_ptr(), out.data_ptr(), rows, width // 2)
        return out
    library.silu_mul(gate_up.data_ptr(), out.data_ptr(), rows, width // 2, torch.get_num_threads())
    return out


def decode_attention_kernel() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """The compiled `decode_attention` function, or None (PyTorch path) when unavailable."""
    library = _library()
    return None if library is None else library.decode_attention


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    packed: PackedWeight | None = None,
) -> torch.Tensor:
    """F.linear: `small_linear` for 1-2 bfloat16 rows when the kernels are built, else the
    pre-packed weight (`packing.py`) where it pays, else the plain library call."""
    rows = x.shape[0]
    if x.is_cuda:
        return F.linear(x, weight, bias)
    if x.dtype == torch.bfloat16 and rows <= SMALL_LINEAR_MAX_ROWS and x.dim() == 2:
        library = _library()
        if library is not None and x.stride(1) == 1 and weight.is_contiguous():
            out_features, in_features = weight.shape
            out = torch.empty(rows, out_features, dtype=x.dtype)
            library.small_linear(
                x.data_ptr(), x.stride(0), weight.data_ptr(),
                None if bias is None else bias.data_ptr(), out.data_ptr(), rows, out_features,
                in_features, 1, torch.get_num_threads(),
            )  # fmt: skip
            return out
    if packed is not None:
        product = packed.matmul(x, bias)
        if product is not None:
            return product
    return F.linear(x, weight, bias)


class NativeDecodeAttention:
    """One step's decode inputs for the kernel; `run` is called once per layer."""

    def __init__(
        self,
        function: ctypes._CFuncPtr,  # type: ignore[name-defined]
        positions: torch.Tensor,
        block_tables: torch.Tensor,
        block_size: int,
        rope_cos: torch.Tensor,
        rope_sin: torch.Tensor,
    ) -> None:
        assert positions.dtype == torch.int64 and block_tables.dtype == torch.int32
        assert rope_cos.dtype == torch.float32 and rope_cos.is_contiguous()
        self.function = function
        self.positions = positions.contiguous()
        self.block_tables = block_tables.contiguous()
        self.block_size = block_size
        self.rope_cos, self.rope_sin = rope_cos, rope_sin.contiguous()
        self.num_threads = torch.get_num_threads()

    def run(
        self,
        qkv: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        out: torch.Tensor,
        num_heads: int,
        scale: float,
    ) -> None:
        """qkv [B, q+2kv] (contiguous rows); caches [KV, slots, D]; out [B, H*D] is written."""
        num_kv_heads, num_slots, head_dim = k_cache.shape
        assert qkv.stride(1) == 1 and k_cache.is_contiguous() and v_cache.is_contiguous()
        assert out.is_contiguous() and qkv.dtype == k_cache.dtype == out.dtype
        status = self.function(
            qkv.data_ptr(), qkv.stride(0), self.rope_cos.data_ptr(), self.rope_sin.data_ptr(),
            self.positions.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), num_slots,
            self.block_tables.data_ptr(), self.block_tables.shape[1], self.block_size,
            out.data_ptr(), qkv.shape[0], num_heads, num_kv_heads, head_dim, scale,
            DTYPE_CODES[qkv.dtype], self.num_threads,
        )  # fmt: skip
        if status != 0:
            raise RuntimeError("native decode attention failed (shape limits or out of memory)")
