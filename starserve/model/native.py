"""Native CPU kernels: C sources in `kernels/`, compiled on first use and loaded with ctypes.

The decode-attention kernel reads each sequence's K/V blocks where they lie in the paged cache
instead of gathering them into a contiguous copy every layer (see docs/engine.md). It is built
with the system C compiler (`CC`, else `cc`) for this very CPU (`-march=native`) into
`cache/native/`, keyed on the source, the flags and the CPU, so a checkout moved to another
machine rebuilds. Without a compiler, or with `STARSERVE_NATIVE=0`, the engine keeps the
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
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from starserve.paths import cache_dir

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "kernels" / "decode_attention.c"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-shared", "-fPIC")
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}

_i64, _ptr = ctypes.c_int64, ctypes.c_void_p
_SIGNATURE = (
    [_ptr, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _ptr, _i64, _i64, _ptr]
    + [_i64] * 4
    + [ctypes.c_float, ctypes.c_int, ctypes.c_int]
)


def _cpu_fingerprint() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    lines = [line for line in info.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _build(output: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC)")
    output.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: several Ray workers may build at once.
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        partial = Path(tmp) / output.name
        subprocess.run(
            [compiler, *FLAGS, "-o", str(partial), str(SOURCE), "-lm"],
            check=True,
            capture_output=True,
            text=True,
        )
        os.replace(partial, output)


@functools.cache
def decode_attention_kernel() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """The compiled `decode_attention` function, or None (PyTorch path) when unavailable."""
    if os.environ.get("STARSERVE_NATIVE", "1") == "0":
        return None
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), _cpu_fingerprint().encode()):
        key.update(part)
    library_path = cache_dir() / "native" / f"decode_attention-{key.hexdigest()[:16]}.so"
    try:
        if not library_path.exists():
            _build(library_path)
        function = ctypes.CDLL(str(library_path)).decode_attention
    except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or err
        logger.warning("native decode attention unavailable, using PyTorch: %s", detail)
        return None
    function.argtypes = _SIGNATURE
    function.restype = ctypes.c_int
    return function


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
