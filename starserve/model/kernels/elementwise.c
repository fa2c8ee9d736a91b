/* The decoder layer's element-wise work in one call each (bfloat16 path):
 *   add_rms_norm  h += delta (optional), out = weight * rmsnorm(h)
 *   silu_mul      out = silu(gate) * up, from the fused [M, 2I] gate|up product
 * In PyTorch each is five to eight small operator calls per layer, whose dispatch costs more than
 * the arithmetic at decode batch sizes. Arithmetic in float32; every stored value is rounded to
 * bfloat16 (nearest even) where PyTorch's bfloat16 path rounds it.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

static inline float bf16_get(const uint16_t *base, int64_t index) {
    uint32_t bits = (uint32_t)base[index] << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t bf16_from(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

static inline float bf16_rounded(float f) { /* f rounded to the nearest bfloat16 */
    uint32_t bits = (uint32_t)bf16_from(f) << 16;
    float r;
    memcpy(&r, &bits, sizeof r);
    return r;
}

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define VECTOR_BF16 1
static inline __m512 load_bf16x16(const uint16_t *p) {
    __m256i half = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}
static inline void store_bf16x16(uint16_t *p, __m512 v) { /* round to nearest even */
    _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh(v));
}
static inline __m512 round_bf16x16(__m512 v) {
    __m256i half = (__m256i)_mm512_cvtneps_pbh(v);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}
#endif

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
            float value = bf16_get(row, k);
            if (delta) {
                value = bf16_rounded(value + bf16_get(delta, m * K + k));
                row[k] = bf16_from(value);
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
            float normed = bf16_rounded(bf16_get(row, k) * scale);
            out[m * K + k] = bf16_from(bf16_get(weight, k) * normed);
        }
    }
}

#ifdef __AVX512F__
/* exp(x) on 16 lanes, x clamped to [-87, 88]: 2^n * p(r), |r| <= ln2/2, degree-6 Taylor. */
static inline __m512 exp16_any(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static inline __m512 bf16x16_load(const uint16_t *p) {
    __m256i half = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}
#endif

/* gate_up [M, 2I] bfloat16 (gate | up), out [M, I]: out = bf16(silu(gate)) * up, rounded. */
void silu_mul(const uint16_t *gate_up, uint16_t *out, int64_t M, int64_t I, int num_threads) {
    (void)num_threads; /* too little work per call to wake a second thread */
    for (int64_t m = 0; m < M; m++) {
        const uint16_t *gate = gate_up + m * 2 * I, *up = gate + I;
        int64_t i = 0;
#ifdef __AVX512F__
        for (; i + 16 <= I; i += 16) {
            __m512 g = bf16x16_load(gate + i);
            __m512 silu = _mm512_div_ps(
                g, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16_any(_mm512_sub_ps(_mm512_setzero_ps(), g))));
#ifdef VECTOR_BF16
            store_bf16x16(out + m * I + i, _mm512_mul_ps(round_bf16x16(silu), load_bf16x16(up + i)));
#else
            float lanes[16], ups[16];
            _mm512_storeu_ps(lanes, silu);
            _mm512_storeu_ps(ups, bf16x16_load(up + i));
            for (int lane = 0; lane < 16; lane++)
                out[m * I + i + lane] = bf16_from(bf16_rounded(lanes[lane]) * ups[lane]);
#endif
        }
#endif
        for (; i < I; i++) {
            float g = bf16_get(gate, i);
            out[m * I + i] = bf16_from(bf16_rounded(g / (1.0f + expf(-g))) * bf16_get(up, i));
        }
    }
}
