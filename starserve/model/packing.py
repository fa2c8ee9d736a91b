"""GEMM weights packed once (at the first forward) into the CPU math library's blocked layout.

`F.linear` on CPU hands the plain [out, in] weight to oneDNN (bfloat16) or MKL (float32), and the
library reorders it into its blocked layout inside every call. At decode batch sizes on a small
model that reorder costs about as much as the product itself. Packing once keeps a second,
blocked copy of each weight beside the plain one (the plain copy still serves 1-2 row products,
long prefills and anything that reads weights) and calls the library on it directly.

Measured on the 2-core dev machine (one SmolLM2-135M layer's four products, 30 layers):
bfloat16 batch 32, 22.8 -> 17.2 ms; float32 batch 32, 62 -> 32 ms; float32 batch 8, 28 -> 12 ms.
Results: bfloat16 packed products are bit-identical to `F.linear`; float32 ones equal it from
about 64 rows and differ in the last bits below (MKL picks another kernel for small M). Without
a bias (Llama) and within the packed range, each output row depends only on its own input row,
never on its batch-mates.

Packing is asked of `starserve.hardware` first: oneDNN's bfloat16 packing needs AVX512 bw/vl/dq
or avx_ne_convert (on a plain AVX2 CPU it raises), so there bfloat16 weights stay plain and
`F.linear` serves them; MKL's float32 packing works from AVX2 up.

MKL splits a float32 product of 5-11 rows between threads in a way that changes the last bits
with the row count, so such products are padded to the next multiple of 4 rows (8 or 12): a
request's result never depends on how many batch-mates it has (measured with 2 threads; 4, 8
and 12+ rows are stable).

Beyond `MAX_PACKED_ROWS` (long prefill chunks) the plain path is as fast or faster, so it is used.
`STARSERVE_PACK=0` turns packing off (for A/B measurements).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from starserve.hardware import cpu

MAX_PACKED_ROWS = 256
PACK_HINT_ROWS = 32  # the batch size the library tunes its layout for (any size works)
MIN_PACKED_ROWS = {torch.bfloat16: 3, torch.float32: 4}  # fewer: small_linear / plain is as fast
FLOAT32_PAD_ROWS = (5, 11)  # float32 products of 5..11 rows run as 8 or 12 (see above)


@dataclass(frozen=True, slots=True)
class PackedWeight:
    plain: torch.Tensor  # [out, in], the weight as loaded
    packed: torch.Tensor  # the library's opaque blocked copy

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
        """x @ plain.T + bias through the packed copy, or None when x's row count is outside
        the range where packing pays (the caller then uses the plain weight)."""
        rows = x.shape[0]
        if x.dim() != 2 or not MIN_PACKED_ROWS[x.dtype] <= rows <= MAX_PACKED_ROWS:
            return None
        if x.dtype == torch.bfloat16:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, bias, "none", [], "")
        low, high = FLOAT32_PAD_ROWS
        if low <= rows <= high:
            padded = -(-rows // 4) * 4
            full = x.new_zeros(padded, x.shape[1])
            full[:rows] = x
            return torch.ops.mkl._mkl_linear(full, self.packed, self.plain, bias, padded)[:rows]
        return torch.ops.mkl._mkl_linear(x.contiguous(), self.packed, self.plain, bias, rows)


def pack_weight(weight: torch.Tensor) -> PackedWeight | None:
    """The packed form of a [out, in] float32 or bfloat16 weight, or None when this PyTorch build
    lacks the library, the CPU lacks the instructions it needs (`hardware`), or STARSERVE_PACK=0."""
    if os.environ.get("STARSERVE_PACK", "1") == "0" or weight.dim() != 2 or weight.is_cuda:
        return None
    weight = weight.detach().contiguous()
    with torch.no_grad():
        bf16_ok = torch.backends.mkldnn.is_available() and cpu().bf16_weight_packing
        if weight.dtype == torch.bfloat16 and bf16_ok:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_HINT_ROWS)
        elif weight.dtype == torch.float32 and torch.backends.mkl.is_available():
            packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, PACK_HINT_ROWS)
        else:
            return None
    return PackedWeight(weight, packed)
