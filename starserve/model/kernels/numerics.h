/* Shared by the kernels: bfloat16 <-> float32 and a 16-lane exp. */
#ifndef STARSERVE_NUMERICS_H
#define STARSERVE_NUMERICS_H

#include <stdint.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t float_to_bf16(float f) { /* round to nearest even, as torch does */
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40); /* NaN */
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

static inline float bf16_rounded(float f) { /* f rounded to the nearest bfloat16 */
    return bf16_to_float(float_to_bf16(f));
}

/* One element of a float32 (dtype 0) or bfloat16 (dtype 1) array, as float32. */
static inline float element(const void *base, int64_t index, int dtype) {
    return dtype ? bf16_to_float(((const uint16_t *)base)[index]) : ((const float *)base)[index];
}

#ifdef __AVX512F__
static inline __m512 load_bf16x16(const uint16_t *p) {
    __m256i half = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

/* 16 elements of a float32 or bfloat16 array, as float32. */
static inline __m512 load16(const void *base, int64_t index, int dtype) {
    return dtype ? load_bf16x16((const uint16_t *)base + index)
                 : _mm512_loadu_ps((const float *)base + index);
}

/* exp(x) on 16 lanes, x clamped to [-87, 88]: 2^n * p(r), |r| <= ln2/2, degree-6 Taylor,
 * relative error below 2e-7. */
static inline __m512 exp16(__m512 x) {
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
#endif

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#define VECTOR_BF16 1
static inline void store_bf16x16(uint16_t *p, __m512 v) { /* round to nearest even */
    _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh(v));
}

static inline __m512 round_bf16x16(__m512 v) {
    __m256i half = (__m256i)_mm512_cvtneps_pbh(v);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}
#endif

#endif
