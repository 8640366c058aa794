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

#endif
