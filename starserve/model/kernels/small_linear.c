/* y = x W^T (+ bias) for a few rows of x: the decode-time matrix-vector products of a small batch.
 *
 * At batch 1-2 a linear layer is bound by reading W once from memory; the library GEMM paths spend
 * more on their own set-up there. This kernel streams W once, four output features at a time,
 * each dotted with every row of x (rows in tiles of four; from 3 rows on oneDNN's AMX path is
 * as fast, so the model calls this for 1-2 rows only).
 *
 *   x    [M, K]   (row stride x_stride)
 *   W    [N, K]   row-major, contiguous
 *   bias [N] or NULL
 *   out  [M, N]   contiguous
 * dtype 0 = float32, 1 = bfloat16 (x, W, bias and out share it); accumulation in float32.
 */
#include <stdint.h>

#include "numerics.h"

#define MAX_ROWS 4
#define OUT_BLOCK 4

/* dot[m][o] = x[m] . W[n0 + o] for o < count (<= OUT_BLOCK), over K. */
static void dot_block(const void *x, int64_t x_stride, const void *W, int64_t n0, int64_t count,
                      int64_t M, int64_t K, int dtype, float dot[MAX_ROWS][OUT_BLOCK]) {
    int64_t k0 = 0;
#if defined(__AVX512F__)
    __m512 acc[MAX_ROWS][OUT_BLOCK];
    for (int64_t m = 0; m < M; m++)
        for (int64_t o = 0; o < OUT_BLOCK; o++) acc[m][o] = _mm512_setzero_ps();
    if (dtype) {
        const uint16_t *xs = x, *ws = W;
#if defined(__AVX512BF16__)
        /* 32 bfloat16 pairs per instruction: products exact, sums in float32. */
        for (; k0 + 32 <= K; k0 += 32) {
            __m512i w[OUT_BLOCK];
            for (int64_t o = 0; o < count; o++)
                w[o] = _mm512_loadu_si512((const void *)(ws + (n0 + o) * K + k0));
            for (int64_t m = 0; m < M; m++) {
                __m512bh xv = (__m512bh)_mm512_loadu_si512((const void *)(xs + m * x_stride + k0));
                for (int64_t o = 0; o < count; o++)
                    acc[m][o] = _mm512_dpbf16_ps(acc[m][o], xv, (__m512bh)w[o]);
            }
        }
#else
        for (; k0 + 16 <= K; k0 += 16) {
            __m512 w[OUT_BLOCK];
            for (int64_t o = 0; o < count; o++)
                w[o] = load_bf16x16(ws + (n0 + o) * K + k0);
            for (int64_t m = 0; m < M; m++) {
                __m512 xv = load_bf16x16(xs + m * x_stride + k0);
                for (int64_t o = 0; o < count; o++) acc[m][o] = _mm512_fmadd_ps(xv, w[o], acc[m][o]);
            }
        }
#endif
    } else {
        const float *xs = x, *ws = W;
        for (; k0 + 16 <= K; k0 += 16) {
            __m512 w[OUT_BLOCK];
            for (int64_t o = 0; o < count; o++) w[o] = _mm512_loadu_ps(ws + (n0 + o) * K + k0);
            for (int64_t m = 0; m < M; m++) {
                __m512 xv = _mm512_loadu_ps(xs + m * x_stride + k0);
                for (int64_t o = 0; o < count; o++) acc[m][o] = _mm512_fmadd_ps(xv, w[o], acc[m][o]);
            }
        }
    }
    for (int64_t m = 0; m < M; m++)
        for (int64_t o = 0; o < count; o++) dot[m][o] = _mm512_reduce_add_ps(acc[m][o]);
#elif defined(VECTOR8)
    /* AVX2+FMA: 8 lanes, bfloat16 widened on load (no bfloat16 dot instruction here). */
    __m256 acc[MAX_ROWS][OUT_BLOCK];
    for (int64_t m = 0; m < M; m++)
        for (int64_t o = 0; o < OUT_BLOCK; o++) acc[m][o] = _mm256_setzero_ps();
    for (; k0 + 8 <= K; k0 += 8) {
        __m256 w[OUT_BLOCK];
        for (int64_t o = 0; o < count; o++) w[o] = load8(W, (n0 + o) * K + k0, dtype);
        for (int64_t m = 0; m < M; m++) {
            __m256 xv = load8(x, m * x_stride + k0, dtype);
            for (int64_t o = 0; o < count; o++) acc[m][o] = _mm256_fmadd_ps(xv, w[o], acc[m][o]);
        }
    }
    for (int64_t m = 0; m < M; m++)
        for (int64_t o = 0; o < count; o++) dot[m][o] = hsum8(acc[m][o]);
#else
    for (int64_t m = 0; m < M; m++)
        for (int64_t o = 0; o < count; o++) dot[m][o] = 0.0f;
#endif
    for (int64_t k = k0; k < K; k++) /* tail (and the whole product without a vector path) */
        for (int64_t m = 0; m < M; m++) {
            float xv = element(x, m * x_stride + k, dtype);
            for (int64_t o = 0; o < count; o++)
                dot[m][o] += xv * element(W, (n0 + o) * K + k, dtype);
        }
}

/* Any M >= 1: rows go in tiles of MAX_ROWS, each tile re-reading the block's 4 rows of W from
 * L1, so W streams from memory once per call. Returns 0 on success, -1 for M < 1. */
int small_linear(const void *x, int64_t x_stride, const void *W, const void *bias, void *out,
                 int64_t M, int64_t N, int64_t K, int dtype, int num_threads) {
    if (M < 1) return -1;
    const int64_t num_blocks = (N + OUT_BLOCK - 1) / OUT_BLOCK, elem = dtype ? 2 : 4;
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t block = 0; block < num_blocks; block++) {
        const int64_t n0 = block * OUT_BLOCK;
        const int64_t count = N - n0 < OUT_BLOCK ? N - n0 : OUT_BLOCK;
        for (int64_t m0 = 0; m0 < M; m0 += MAX_ROWS) {
            const int64_t rows = M - m0 < MAX_ROWS ? M - m0 : MAX_ROWS;
            float dot[MAX_ROWS][OUT_BLOCK];
            dot_block((const char *)x + m0 * x_stride * elem, x_stride, W, n0, count, rows, K,
                      dtype, dot);
            for (int64_t m = 0; m < rows; m++)
                for (int64_t o = 0; o < count; o++) {
                    float value = dot[m][o] + (bias ? element(bias, n0 + o, dtype) : 0.0f);
                    int64_t index = (m0 + m) * N + n0 + o;
                    if (dtype)
                        ((uint16_t *)out)[index] = float_to_bf16(value);
                    else
                        ((float *)out)[index] = value;
                }
        }
    }
    return 0;
}
