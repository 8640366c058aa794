/* What this build was told the CPU has (extension.py builds with -march=native, narrowed by GLASSFORMER_CPU): the
   macros the kernels' paths are chosen by, the types and sizes they share, and the helpers every one of them uses
   (quantized.h, fixed_point.h, products.h, decoder.h). */
#ifndef GLASSFORMER_SIMD_H
#define GLASSFORMER_SIMD_H
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <vector>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__ARM_NEON)
#include <arm_neon.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define GLASSFORMER_VNNI 1
#define MAX_ROWS 8 /* rows of x per pass over a weight row */
#else
#define MAX_ROWS 4
#endif
#if defined(__ARM_FEATURE_DOTPROD) && !defined(__AVX2__)
#define GLASSFORMER_SDOT 1
#endif

typedef int64_t i64;
#define BLOCK 32
#define MAX_GROUPS 2048 /* K / G: a row's scales are widened on the stack */
#define XMAX 32639.0f /* 127 * 256 + 127: xq = 256 hi + lo, hi and lo int8 */

/* this thread's index t of the T threads of an OpenMP parallel region (0 of 1 without OpenMP) */
static inline void thread_index(i64 *t, i64 *T) {
#ifdef _OPENMP
    *t = omp_get_thread_num(), *T = omp_get_num_threads();
#else
    *t = 0, *T = 1;
#endif
}

/* the path this build runs (glassformer::simd) */
static inline const char *simd_path() {
#if defined(GLASSFORMER_VNNI)
    return "AVX512-VNNI";
#elif defined(__AVX2__)
    return "AVX2";
#elif defined(GLASSFORMER_SDOT)
    return "NEON-dotprod";
#elif defined(__ARM_NEON)
    return "NEON";
#else
    return "C";
#endif
}

#ifdef __AVX2__
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* sum_i a[i] b[i] */
static inline float dot_f32(const float *a, const float *b, i64 n) {
    i64 i = 0;
    float sum = 0.0f;
#ifdef __AVX2__
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    sum = hsum(acc);
#endif
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

/* 16 floats as one value (GCC's and clang's vector extension): one AVX512 register, two AVX2 ones, four NEON ones */
typedef float f32x16 __attribute__((vector_size(64)));

static inline f32x16 load16(const float *p) {
    f32x16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* bfloat16, the upper 16 bits of a float32: a key/value cache may hold its values so (attention.h) */
typedef uint16_t bf16_t;
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));

static inline float as_float(float v) { return v; }

static inline float as_float(bf16_t v) {
    const uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* x rounded to the nearest bfloat16, ties to even; a NaN to 0x7FC0 — as torch rounds (c10::BFloat16) */
static inline bf16_t to_bf16(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
    return (bf16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

/* 16 bfloat16 widened to floats */
static inline f32x16 load16(const bf16_t *p) {
    u16x16 h;
    memcpy(&h, p, sizeof h);
    const u32x16 bits = __builtin_convertvector(h, u32x16) << 16;
    f32x16 v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* e^x in float32, within a few ulp of expf for x in [-87, 88] (clamped there: e^-87 ~ 1.6e-38 stands for 0): x = n ln 2
   + r, |r| <= ln 2 / 2 (Cody-Waite, Cephes' constants), e^r = 1 + r + r^2 P(r) (Cephes' degree-5 P), 2^n made in
   the exponent bits. No calls and no branches, so that loops over it vectorize. */
static inline __attribute__((always_inline)) float exp_approx(float x) {
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    const float n = rintf(x * 1.44269504088896341f);
    const float r = fmaf(n, 2.12194440e-4f, fmaf(n, -0.693359375f, x));
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f), p = fmaf(p, r, 8.3334519073e-3f), p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f), p = fmaf(p, r, 5.0000001201e-1f);
    const int32_t bits = ((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return fmaf(p, r * r, r + 1.0f) * two_n;
}

typedef int32_t i32x16 __attribute__((vector_size(64))); /* a comparison of two f32x16: -1 where true, else 0 */

/* the larger of a and b lane by lane (b where a is NaN) */
static inline f32x16 max16(f32x16 a, f32x16 b) {
    const i32x16 a_larger = a > b;
    return (f32x16)((a_larger & (i32x16)a) | (~a_larger & (i32x16)b));
}

/* whether any lane of a comparison is true: its halves OR-ed together until one lane is left */
static inline bool any16(i32x16 m) {
    const auto lo8 = __builtin_shufflevector(m, m, 0, 1, 2, 3, 4, 5, 6, 7);
    const auto hi8 = __builtin_shufflevector(m, m, 8, 9, 10, 11, 12, 13, 14, 15);
    const auto m8 = lo8 | hi8;
    const auto m4 = __builtin_shufflevector(m8, m8, 0, 1, 2, 3) | __builtin_shufflevector(m8, m8, 4, 5, 6, 7);
    return (m4[0] | m4[1] | m4[2] | m4[3]) != 0;
}

/* the largest of s[0 .. n) (-inf for n = 0; NaNs passed over), 16 lanes at a time */
static inline float max_of(const float *s, i64 n) {
    f32x16 lanes = {};
    lanes -= INFINITY;
    i64 j = 0;
    for (; j + 16 <= n; j += 16) lanes = max16(load16(s + j), lanes);
    float top = -INFINITY;
    for (int c = 0; c < 16; c++) top = lanes[c] > top ? lanes[c] : top;
    for (; j < n; j++) top = s[j] > top ? s[j] : top;
    return top;
}

/* Σ_j e^(s[j] − top) over j < n, summed 16 lanes at a time; with Write, each term is stored in out[j] as well */
template <bool Write>
static inline float exp_sum(const float *s, i64 n, float top, float *out) {
    f32x16 lanes = {};
    i64 j = 0;
    for (; j + 16 <= n; j += 16) {
        f32x16 v = load16(s + j) - top;
        for (int c = 0; c < 16; c++) v[c] = exp_approx(v[c]);
        if (Write) memcpy(out + j, &v, sizeof v);
        lanes += v;
    }
    float total = 0.0f;
    for (int c = 0; c < 16; c++) total += lanes[c];
    for (; j < n; j++) {
        const float e = exp_approx(s[j] - top);
        if (Write) out[j] = e;
        total += e;
    }
    return total;
}

/* whether any of s[0 .. n) is NaN */
static inline bool any_nan(const float *s, i64 n) {
    i32x16 lanes = {};
    i64 j = 0;
    for (; j + 16 <= n; j += 16) {
        const f32x16 v = load16(s + j);
        lanes |= v != v;
    }
    bool nan = any16(lanes);
    for (; j < n; j++) nan |= s[j] != s[j];
    return nan;
}

#endif
