/* The decoder layer's element-wise work in one call each (bfloat16, and float32: the *_f32 pair):
 *   add_rms_norm  h += delta (optional), out = weight * rmsnorm(h)
 *   silu_mul      out = silu(gate) * up, from the fused [M, 2I] gate|up product
 * In PyTorch each is five to eight small operator calls per layer, whose dispatch costs more than
 * the arithmetic at decode batch sizes. Arithmetic in float32; every stored value is rounded to
 * bfloat16 (nearest even) where PyTorch's bfloat16 path rounds it.
 */
#include <math.h>
#include <stdint.h>

#include "numerics.h"

/* h [M, K] (bfloat16, updated in place when delta is given), delta [M, K] or NULL,
 * weight [K], out [M, K]. */
void add_rms_norm(uint16_t *h, const uint16_t *delta, const uint16_t *weight, uint16_t *out,
                  int64_t M, int64_t K, float eps, int num_threads) {
    (void)num_threads; /* too little work per call to wake a second thread */
    for (int64_t m = 0; m < M; m++) {
        uint16_t *row = h + m * K;
        float squares = 0.0f;
        int64_t k0 = 0;
#ifdef VECTOR_BF16
        __m512 sum = _mm512_setzero_ps();
        for (; k0 + 16 <= K; k0 += 16) {
            __m512 value = load_bf16x16(row + k0);
            if (delta) {
                value = round_bf16x16(_mm512_add_ps(value, load_bf16x16(delta + m * K + k0)));
                store_bf16x16(row + k0, value);
            }
            sum = _mm512_fmadd_ps(value, value, sum);
        }
        squares = _mm512_reduce_add_ps(sum);
#endif
        for (int64_t k = k0; k < K; k++) {
            float value = bf16_to_float(row[k]);
            if (delta) {
                value = bf16_rounded(value + bf16_to_float(delta[m * K + k]));
                row[k] = float_to_bf16(value);
            }
            squares += value * value;
        }
        float scale = 1.0f / sqrtf(squares / (float)K + eps);
        k0 = 0;
#ifdef VECTOR_BF16
        for (; k0 + 16 <= K; k0 += 16) {
            __m512 normed = round_bf16x16(_mm512_mul_ps(load_bf16x16(row + k0), _mm512_set1_ps(scale)));
            store_bf16x16(out + m * K + k0, _mm512_mul_ps(load_bf16x16(weight + k0), normed));
        }
#endif
        for (int64_t k = k0; k < K; k++) {
            float normed = bf16_rounded(bf16_to_float(row[k]) * scale);
            out[m * K + k] = float_to_bf16(bf16_to_float(weight[k]) * normed);
        }
    }
}

/* gate_up [M, 2I] bfloat16 (gate | up), out [M, I]: out = bf16(silu(gate)) * up, rounded. */
void silu_mul(const uint16_t *gate_up, uint16_t *out, int64_t M, int64_t I, int num_threads) {
    (void)num_threads; /* too little work per call to wake a second thread */
    for (int64_t m = 0; m < M; m++) {
        const uint16_t *gate = gate_up + m * 2 * I, *up = gate + I;
        int64_t i = 0;
#ifdef __AVX512F__
        for (; i + 16 <= I; i += 16) {
            __m512 g = load_bf16x16(gate + i);
            __m512 silu = _mm512_div_ps(
                g, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
#ifdef VECTOR_BF16
            store_bf16x16(out + m * I + i, _mm512_mul_ps(round_bf16x16(silu), load_bf16x16(up + i)));
#else
            float lanes[16], ups[16];
            _mm512_storeu_ps(lanes, silu);
            _mm512_storeu_ps(ups, load_bf16x16(up + i));
            for (int lane = 0; lane < 16; lane++)
                out[m * I + i + lane] = float_to_bf16(bf16_rounded(lanes[lane]) * ups[lane]);
#endif
        }
#endif
        for (; i < I; i++) {
            float g = bf16_to_float(gate[i]);
            out[m * I + i] = float_to_bf16(bf16_rounded(g / (1.0f + expf(-g))) * bf16_to_float(up[i]));
        }
    }
}

/* float32: h [M, K] (updated in place when delta is given), delta [M, K] or NULL, weight [K],
 * out [M, K]; out = weight * (h * (1 / sqrt(mean(h^2) + eps))), PyTorch's order of operations
 * (the sum of squares is summed in another order: last-bit differences only). */
void add_rms_norm_f32(float *h, const float *delta, const float *weight, float *out, int64_t M,
                      int64_t K, float eps) {
    for (int64_t m = 0; m < M; m++) {
        float *row = h + m * K;
        const float *add = delta ? delta + m * K : NULL;
        float squares = 0.0f;
        int64_t k0 = 0;
#ifdef VECTOR8
        __m256 sum = _mm256_setzero_ps();
        for (; k0 + 8 <= K; k0 += 8) {
            __m256 value = _mm256_loadu_ps(row + k0);
            if (add) {
                value = _mm256_add_ps(value, _mm256_loadu_ps(add + k0));
                _mm256_storeu_ps(row + k0, value);
            }
            sum = _mm256_fmadd_ps(value, value, sum);
        }
        squares = hsum8(sum);
#endif
        for (int64_t k = k0; k < K; k++) {
            if (add) row[k] += add[k];
            squares += row[k] * row[k];
        }
        const float scale = 1.0f / sqrtf(squares / (float)K + eps);
        k0 = 0;
#ifdef VECTOR8
        for (; k0 + 8 <= K; k0 += 8) {
            __m256 normed = _mm256_mul_ps(_mm256_loadu_ps(row + k0), _mm256_set1_ps(scale));
            _mm256_storeu_ps(out + m * K + k0, _mm256_mul_ps(_mm256_loadu_ps(weight + k0), normed));
        }
#endif
        for (int64_t k = k0; k < K; k++) out[m * K + k] = weight[k] * (row[k] * scale);
    }
}

/* float32 gate_up [M, 2I] (gate | up), out [M, I] = gate / (1 + exp(-gate)) * up. */
void silu_mul_f32(const float *gate_up, float *out, int64_t M, int64_t I) {
    for (int64_t m = 0; m < M; m++) {
        const float *gate = gate_up + m * 2 * I, *up = gate + I;
        int64_t i = 0;
#ifdef VECTOR8
        const __m256 one = _mm256_set1_ps(1.0f);
        for (; i + 8 <= I; i += 8) {
            __m256 g = _mm256_loadu_ps(gate + i);
            __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
            _mm256_storeu_ps(out + m * I + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
        }
#endif
        for (; i < I; i++) out[m * I + i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
    }
}

/* Which vector path this build takes (16 = AVX-512, 8 = AVX2+FMA, 1 = scalar), for the tests. */
int vector_lanes(void) {
#if defined(__AVX512F__)
    return 16;
#elif defined(VECTOR8)
    return 8;
#else
    return 1;
#endif
}
