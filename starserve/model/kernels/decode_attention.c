/* Paged decode attention for one layer, read in place from the KV cache.
 *
 * For each decode token b (one per running sequence) this kernel
 *   1. applies RoPE to its query and key (the same three roundings as the PyTorch path:
 *      q*cos, rotate_half(q)*sin, their sum; no fused multiply-add),
 *   2. writes its key and value into the cache slot of position positions[b],
 *   3. attends over positions 0..positions[b] of its sequence, walking the block table and
 *      reading each block's K/V rows where they lie (no gather copy), softmax in float32.
 *
 * Layouts (all row-major, see docs/engine.md):
 *   qkv          [B, row_stride] : q (H*D) | k (KV*D) | v (KV*D) for each token
 *   cos, sin     [max_positions, D] float32
 *   k/v_cache    [KV, num_slots, D], slot = block_id * block_size + offset
 *   block_tables [B, max_blocks] int32
 *   out          [B, H*D]
 * dtype 0 = float32, 1 = bfloat16 (qkv, caches and out share it).
 *
 * Built by starserve/model/native.py with -O3 -fopenmp -ffp-contract=off and the ISA level's
 * flags (-march=native, or -mavx2 -mfma): AVX-512 builds take the 16-lane paths, AVX2+FMA builds
 * the 8-lane ones (VECTOR8), others the scalar loops. The OpenMP runtime resolves to the one
 * PyTorch already loaded, so both share one thread pool.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "numerics.h"

#define MAX_HEAD_DIM 256
#define MAX_GROUP 64

static inline void store_elem(void *base, int64_t index, float value, int dtype) {
    if (dtype)
        ((uint16_t *)base)[index] = float_to_bf16(value);
    else
        ((float *)base)[index] = value;
}

/* Row of D values at `index` into float32 `dst`. */
static inline void load_row(float *dst, const void *base, int64_t index, int64_t D, int dtype) {
    if (!dtype) {
        memcpy(dst, (const float *)base + index, (size_t)D * sizeof(float));
        return;
    }
    for (int64_t d = 0; d < D; d++) dst[d] = bf16_to_float(((const uint16_t *)base)[index + d]);
}

/* Step 1 and 2 for token b: rotated query into q_out (float32 [H*D]); rotated key and value
 * into the cache. */
static void rope_and_write(const void *qkv, const float *cos,
                           const float *sin, int64_t position, void *k_cache, void *v_cache,
                           int64_t num_slots, int64_t slot, float *q_out, int64_t H, int64_t KV,
                           int64_t D, int dtype) {
    const int64_t half = D / 2;
    const float *c = cos + position * D, *s = sin + position * D;
    float x[MAX_HEAD_DIM];
    for (int64_t head = 0; head < H + KV; head++) {
        load_row(x, qkv, head * D, D, dtype);
        for (int64_t d = 0; d < D; d++) {
            float rotated = d < half ? -x[d + half] : x[d - half];
            float a = x[d] * c[d];
            float b = rotated * s[d];
            float value = a + b;
            if (head < H)
                q_out[head * D + d] = dtype ? bf16_to_float(float_to_bf16(value)) : value;
            else
                store_elem(k_cache, ((head - H) * num_slots + slot) * D + d, value, dtype);
        }
    }
    for (int64_t head = 0; head < KV; head++)
        for (int64_t d = 0; d < D; d++)
            store_elem(v_cache, (head * num_slots + slot) * D + d,
                       element(qkv, (H + KV + head) * D + d, dtype), dtype);
}

#ifdef __AVX512F__
/* Sum of each of 16 vectors, as one vector (lane i = sum of acc[i]): a transpose-and-add tree,
 * about a quarter of the work of 16 horizontal reductions. */
static inline __m512 sum16(const __m512 acc[16]) {
    __m512 pairs[8], quads[4];
    for (int i = 0; i < 8; i++)
        pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(acc[2 * i], acc[2 * i + 1]),
                                 _mm512_unpackhi_ps(acc[2 * i], acc[2 * i + 1]));
    for (int i = 0; i < 4; i++) {
        __m512d a = _mm512_castps_pd(pairs[2 * i]), b = _mm512_castps_pd(pairs[2 * i + 1]);
        quads[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                                 _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    __m512 low = _mm512_add_ps(_mm512_shuffle_f32x4(quads[0], quads[1], 0x44),
                               _mm512_shuffle_f32x4(quads[0], quads[1], 0xEE));
    __m512 high = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2], quads[3], 0x44),
                                _mm512_shuffle_f32x4(quads[2], quads[3], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_f32x4(low, high, 0x88),
                         _mm512_shuffle_f32x4(low, high, 0xDD));
}

/* q . k_p for 16 consecutive cache rows p (one run of a block), D % 16 == 0. */
static inline __m512 dot16(const float *q, const void *k_cache, int64_t k_index, int64_t D,
                           int dtype) {
    __m512 acc[16];
    for (int p = 0; p < 16; p++) {
        __m512 dot = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; d += 16)
            dot = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), load16(k_cache, k_index + p * D + d, dtype), dot);
        acc[p] = dot;
    }
    return sum16(acc);
}
#elif defined(VECTOR8)
/* q . k_p for the 8 cache rows at rows[0..7], D % 8 == 0: eight independent FMA chains. */
static inline __m256 dot8(const float *q, const void *k_cache, const int64_t *rows, int64_t D,
                          int dtype) {
    __m256 acc[8];
    for (int p = 0; p < 8; p++) {
        __m256 dot = _mm256_setzero_ps();
        for (int64_t d = 0; d < D; d += 8)
            dot = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(k_cache, rows[p] + d, dtype), dot);
        acc[p] = dot;
    }
    return sum8(acc);
}

/* out_g = sum_j p_gj v_j for W = 8 * NV columns at a time, the G x NV sums in registers. */
#define PV_COLUMNS(NV)                                                                         \
    for (int64_t d = 0; d < D; d += 8 * (NV)) {                                                \
        __m256 sums[8][NV];                                                                    \
        for (int64_t g = 0; g < G; g++)                                                        \
            for (int c = 0; c < (NV); c++) sums[g][c] = _mm256_setzero_ps();                  \
        for (int64_t j = 0; j < context; j++) {                                                \
            __m256 v[NV];                                                                      \
            for (int c = 0; c < (NV); c++) v[c] = load8(v_cache, rows[j] + d + 8 * c, dtype);  \
            for (int64_t g = 0; g < G; g++) {                                                  \
                __m256 p = _mm256_set1_ps(scores[g * context + j]);                            \
                for (int c = 0; c < (NV); c++) sums[g][c] = _mm256_fmadd_ps(p, v[c], sums[g][c]); \
            }                                                                                  \
        }                                                                                      \
        for (int64_t g = 0; g < G; g++)                                                        \
            for (int c = 0; c < (NV); c++) _mm256_storeu_ps(acc + g * D + d + 8 * c, sums[g][c]); \
    }
#endif

/* Step 3 for token b and one KV head: the G query heads of its group attend over `context`
 * positions. q: float32 [G, D]; out: G rows of D at out_base (dtype). */
static void attend_group(const float *q, const void *k_cache, const void *v_cache,
                         int64_t head_offset, const int32_t *block_table, int64_t block_size,
                         int64_t context, int64_t G, int64_t D, float scale, int dtype,
                         float *scratch, void *out, int64_t out_index) {
    float *scores = scratch, *acc = scratch + G * context, inv_sum[64];
    /* rows[j]: offset of position j's K/V row, walking the block table once (no division in
     * the loops below: a 64-bit division per position cost more than the arithmetic) */
    int64_t *rows = (int64_t *)(acc + G * D);
    for (int64_t j = 0, block = 0; j < context; block++)
        for (int64_t offset = 0; offset < block_size && j < context; offset++, j++)
            rows[j] = head_offset + ((int64_t)block_table[block] * block_size + offset) * D;
    /* scores[g * context + j] = q_g . k_j * scale; whole blocks 16 positions at a time */
    int64_t j = 0;
#ifdef __AVX512F__
    if (D % 16 == 0 && block_size % 16 == 0)
        for (; j + 16 <= context; j += 16) {
            for (int64_t g = 0; g < G; g++)
                _mm512_storeu_ps(scores + g * context + j,
                                 _mm512_mul_ps(dot16(q + g * D, k_cache, rows[j], D, dtype),
                                               _mm512_set1_ps(scale)));
        }
#elif defined(VECTOR8)
    if (D % 8 == 0)
        for (; j + 8 <= context; j += 8)
            for (int64_t g = 0; g < G; g++)
                _mm256_storeu_ps(scores + g * context + j,
                                 _mm256_mul_ps(dot8(q + g * D, k_cache, rows + j, D, dtype),
                                               _mm256_set1_ps(scale)));
#endif
    for (; j < context; j++) {
        int64_t k_index = rows[j];
#ifdef __AVX512F__
        if (D % 16 == 0) {
            for (int64_t g = 0; g < G; g++) {
                __m512 dot = _mm512_setzero_ps();
                for (int64_t d = 0; d < D; d += 16)
                    dot = _mm512_fmadd_ps(_mm512_loadu_ps(q + g * D + d),
                                          load16(k_cache, k_index + d, dtype), dot);
                scores[g * context + j] = _mm512_reduce_add_ps(dot) * scale;
            }
            continue;
        }
#elif defined(VECTOR8)
        if (D % 8 == 0) {
            for (int64_t g = 0; g < G; g++) {
                __m256 dot = _mm256_setzero_ps();
                for (int64_t d = 0; d < D; d += 8)
                    dot = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * D + d),
                                          load8(k_cache, k_index + d, dtype), dot);
                scores[g * context + j] = hsum8(dot) * scale;
            }
            continue;
        }
#endif
        for (int64_t g = 0; g < G; g++) {
            float dot = 0.0f;
            for (int64_t d = 0; d < D; d++)
                dot += q[g * D + d] * element(k_cache, k_index + d, dtype);
            scores[g * context + j] = dot * scale;
        }
    }
    /* softmax per query head (unnormalised; divided at the end) */
    for (int64_t g = 0; g < G; g++) {
        float *row = scores + g * context, peak = -INFINITY, sum = 0.0f;
        for (int64_t j = 0; j < context; j++) peak = row[j] > peak ? row[j] : peak;
        int64_t j = 0;
#ifdef __AVX512F__
        __m512 vsum = _mm512_setzero_ps(), vpeak = _mm512_set1_ps(peak);
        for (; j + 16 <= context; j += 16) {
            __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(row + j), vpeak));
            _mm512_storeu_ps(row + j, e);
            vsum = _mm512_add_ps(vsum, e);
        }
        sum = _mm512_reduce_add_ps(vsum);
#elif defined(VECTOR8)
        __m256 vsum = _mm256_setzero_ps(), vpeak = _mm256_set1_ps(peak);
        for (; j + 8 <= context; j += 8) {
            __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(row + j), vpeak));
            _mm256_storeu_ps(row + j, e);
            vsum = _mm256_add_ps(vsum, e);
        }
        sum = hsum8(vsum);
#endif
        for (; j < context; j++) {
            row[j] = expf(row[j] - peak);
            sum += row[j];
        }
        inv_sum[g] = 1.0f / sum;
    }
    /* out_g = sum_j p_gj v_j */
    memset(acc, 0, (size_t)(G * D) * sizeof(float));
#ifdef __AVX512F__
    if (D % 16 == 0 && G <= 8) { /* 16 columns at a time, the G sums held in registers */
        for (int64_t d = 0; d < D; d += 16) {
            __m512 sums[8];
            for (int64_t g = 0; g < G; g++) sums[g] = _mm512_setzero_ps();
            for (int64_t j = 0; j < context; j++) {
                __m512 v = load16(v_cache, rows[j] + d, dtype);
                for (int64_t g = 0; g < G; g++)
                    sums[g] = _mm512_fmadd_ps(_mm512_set1_ps(scores[g * context + j]), v, sums[g]);
            }
            for (int64_t g = 0; g < G; g++) _mm512_storeu_ps(acc + g * D + d, sums[g]);
        }
        context = 0; /* done: skip the general loop below */
    }
#elif defined(VECTOR8)
    if (D % 32 == 0 && G <= 3) { /* 32 columns: 4 x G sums + 4 loads fit the 16 registers */
        PV_COLUMNS(4)
        context = 0;
    } else if (D % 8 == 0 && G <= 8) {
        PV_COLUMNS(1)
        context = 0;
    }
#endif
    for (int64_t j = 0; j < context; j++) {
        int64_t v_index = rows[j];
#ifdef __AVX512F__
        if (D % 16 == 0) {
            for (int64_t d = 0; d < D; d += 16) {
                __m512 v = load16(v_cache, v_index + d, dtype);
                for (int64_t g = 0; g < G; g++) {
                    __m512 a = _mm512_loadu_ps(acc + g * D + d);
                    a = _mm512_fmadd_ps(_mm512_set1_ps(scores[g * context + j]), v, a);
                    _mm512_storeu_ps(acc + g * D + d, a);
                }
            }
            continue;
        }
#endif
        for (int64_t d = 0; d < D; d++) {
            float v = element(v_cache, v_index + d, dtype);
            for (int64_t g = 0; g < G; g++) acc[g * D + d] += scores[g * context + j] * v;
        }
    }
    for (int64_t g = 0; g < G; g++)
        for (int64_t d = 0; d < D; d++)
            store_elem(out, out_index + g * D + d, acc[g * D + d] * inv_sum[g], dtype);
}

/* Returns 0 on success, -1 when the shapes exceed the kernel's limits or memory runs out. */
int decode_attention(const void *qkv, int64_t row_stride, const float *cos, const float *sin,
                     const int64_t *positions, void *k_cache, void *v_cache, int64_t num_slots,
                     const int32_t *block_tables, int64_t max_blocks, int64_t block_size,
                     void *out, int64_t B, int64_t H, int64_t KV, int64_t D, float scale,
                     int dtype, int num_threads) {
    const int64_t G = H / KV, elem = dtype ? 2 : 4;
    if (G > MAX_GROUP || D > MAX_HEAD_DIM || D % 2) return -1;
    int64_t max_context = 0;
    for (int64_t b = 0; b < B; b++)
        max_context = positions[b] + 1 > max_context ? positions[b] + 1 : max_context;
    /* queries [B, H, D] float32, then one scratch area per thread: scores, accumulators and
     * the row offsets (int64, two floats each) */
    const int64_t scratch_size = G * max_context + G * D + 2 * max_context + 2;
    float *queries = malloc((size_t)(B * H * D + num_threads * scratch_size) * sizeof(float));
    if (!queries) return -1;
#pragma omp parallel num_threads(num_threads)
    {
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; b++) {
            int64_t position = positions[b];
            const int32_t *table = block_tables + b * max_blocks;
            int64_t slot = (int64_t)table[position / block_size] * block_size + position % block_size;
            rope_and_write((const char *)qkv + b * row_stride * elem, cos, sin, position, k_cache,
                           v_cache, num_slots, slot, queries + b * H * D, H, KV, D, dtype);
        }
        /* implicit barrier: every key is in the cache before anyone reads */
        float *scratch = queries + B * H * D + omp_get_thread_num() * scratch_size;
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < B * KV; item++) {
            int64_t b = item / KV, kv_head = item % KV, first = (b * H + kv_head * G) * D;
            attend_group(queries + first, k_cache, v_cache, kv_head * num_slots * D,
                         block_tables + b * max_blocks, block_size, positions[b] + 1, G, D,
                         scale, dtype, scratch, out, first);
        }
    }
    free(queries);
    return 0;
}
