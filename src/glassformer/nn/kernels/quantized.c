/* Weight-only quantized matrix products for a few rows of float32 activations (decoding):

       y[m, n] = sum_k x[m, k] * w[n, k] + bias[n]

   with the weight stored as integer codes and per-group float32 scales (and offsets), k in groups of G along the
   input (glassformer.nn.quantization states the formats):

       int8   w[n, k] = codes[n, k] * scales[n, k / G]                       codes int8, one byte each
       int4   w[n, k] = codes[n, k] * scales[n, k / G] + offsets[n, k / G]   codes 0..15, two per byte

   int4 codes come in blocks of 32 along the input, 16 bytes per block: byte j holds code j in its low nibble and
   code j + 16 in its high nibble (the layout of llama.cpp's Q4_0 / Q4_1 blocks).

   Each output row n dequantizes 8 weights at a time into a vector and multiplies it with up to 4 rows of x at once
   (MB accumulators); rows of the output are shared among threads with OpenMP where the compiler has it. The AVX2
   path and the plain C path compute the same formula; glassformer compares both against its reference. */
#include <stdint.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

typedef int64_t i64;

#ifdef __AVX2__
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* the C independent sums of one row of x, added up */
static inline float row_sum(const __m256 *acc, int C) {
    __m256 sum = acc[0];
    for (int a = 1; a < C; a++) sum = _mm256_add_ps(sum, acc[a]);
    return hsum(sum);
}
#endif

/* one output row n of int8 weights for MB rows of x (MB a constant at each call: the compiler unrolls it) */
static inline __attribute__((always_inline)) void int8_row(
    const int MB, const float *x, i64 K, const int8_t *codes, const float *scales, i64 G, float *out) {
#ifdef __AVX2__
    const int C = 4 / MB;  /* independent sums per row of x: 4 multiply-adds in flight hide their latency */
    __m256 acc[4];
    for (int a = 0; a < 4; a++) acc[a] = _mm256_setzero_ps();
    for (i64 k = 0; k < K; k += 32) {  /* 32 weights of one group (G is a multiple of 32) */
        const __m256 s = _mm256_set1_ps(scales[k / G]);
        for (int p = 0; p < 4; p++) {
            __m128i c = _mm_loadl_epi64((const __m128i *)(codes + k + p * 8));
            __m256 w = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c)), s);
            for (int m = 0; m < MB; m++)
                acc[m * C + p % C] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + m * K + k + p * 8), acc[m * C + p % C]);
        }
    }
    for (int m = 0; m < MB; m++) out[m] = row_sum(acc + m * C, C);
#else
    float acc[4] = {0, 0, 0, 0};
    for (i64 g = 0; g < K / G; g++) {
        float part[4] = {0, 0, 0, 0};
        for (i64 k = g * G; k < (g + 1) * G; k++)
            for (int m = 0; m < MB; m++) part[m] += (float)codes[k] * x[m * K + k];
        for (int m = 0; m < MB; m++) acc[m] += part[m] * scales[g];
    }
    for (int m = 0; m < MB; m++) out[m] = acc[m];
#endif
}

static inline __attribute__((always_inline)) void int4_row(
    const int MB, const float *x, i64 K, const uint8_t *codes, const float *scales, const float *offsets, i64 G,
    float *out) {
#ifdef __AVX2__
    const int C = 4 / MB;  /* independent sums per row of x, as in int8_row */
    __m256 acc[4];
    for (int a = 0; a < 4; a++) acc[a] = _mm256_setzero_ps();
    const __m256i low = _mm256_set1_epi32(0x0F);
    for (i64 b = 0; b < K / 32; b++) {  /* block b: codes b*32 .. b*32+31 in bytes b*16 .. b*16+15 */
        const i64 g = b * 32 / G;
        const __m256 s = _mm256_set1_ps(scales[g]), o = _mm256_set1_ps(offsets[g]);
        /* 8 bytes widened to 8 lanes at once hold 16 codes: low nibbles = codes 0..7 (or 8..15), high nibbles =
           codes 16..23 (or 24..31); one widening per 16 codes instead of one per 8 */
        __m256i first = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(codes + b * 16)));
        __m256i second = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(codes + b * 16 + 8)));
        __m256i parts[4] = {_mm256_and_si256(first, low), _mm256_and_si256(second, low), _mm256_srli_epi32(first, 4),
                            _mm256_srli_epi32(second, 4)};  /* codes 0-7, 8-15, 16-23, 24-31 */
        for (int p = 0; p < 4; p++) {
            __m256 w = _mm256_fmadd_ps(_mm256_cvtepi32_ps(parts[p]), s, o);
            const float *xk = x + b * 32 + p * 8;
            for (int m = 0; m < MB; m++)
                acc[m * C + p % C] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xk + m * K), acc[m * C + p % C]);
        }
    }
    for (int m = 0; m < MB; m++) out[m] = row_sum(acc + m * C, C);
#else
    float acc[4] = {0, 0, 0, 0};
    for (i64 b = 0; b < K / 32; b++) {
        const i64 g = b * 32 / G;
        for (int j = 0; j < 16; j++) {
            uint8_t byte = codes[b * 16 + j];
            float w0 = (float)(byte & 15) * scales[g] + offsets[g], w1 = (float)(byte >> 4) * scales[g] + offsets[g];
            for (int m = 0; m < MB; m++) acc[m] += w0 * x[m * K + b * 32 + j] + w1 * x[m * K + b * 32 + j + 16];
        }
    }
    for (int m = 0; m < MB; m++) out[m] = acc[m];
#endif
}

/* y (M, N) = x (M, K) W^T + bias; bias may be NULL */
void glassformer_int8_linear(const float *x, i64 M, i64 K, const int8_t *codes, const float *scales, i64 N, i64 G,
                             const float *bias, float *y, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (i64 n = 0; n < N; n++) {
        const int8_t *c = codes + n * K;
        const float *s = scales + n * (K / G);
        for (i64 m0 = 0, mb; m0 < M; m0 += mb) {
            float out[4];
            mb = M - m0 >= 4 ? 4 : M - m0 >= 2 ? 2 : 1;
            const float *xm = x + m0 * K;
            switch (mb) {
                case 4: int8_row(4, xm, K, c, s, G, out); break;
                case 2: int8_row(2, xm, K, c, s, G, out); break;
                default: int8_row(1, xm, K, c, s, G, out); break;
            }
            for (i64 m = 0; m < mb; m++) y[(m0 + m) * N + n] = out[m] + (bias ? bias[n] : 0.0f);
        }
    }
}

void glassformer_int4_linear(const float *x, i64 M, i64 K, const uint8_t *codes, const float *scales,
                             const float *offsets, i64 N, i64 G, const float *bias, float *y, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (i64 n = 0; n < N; n++) {
        const uint8_t *c = codes + n * (K / 2);
        const float *s = scales + n * (K / G), *o = offsets + n * (K / G);
        for (i64 m0 = 0, mb; m0 < M; m0 += mb) {
            float out[4];
            mb = M - m0 >= 4 ? 4 : M - m0 >= 2 ? 2 : 1;
            const float *xm = x + m0 * K;
            switch (mb) {
                case 4: int4_row(4, xm, K, c, s, o, G, out); break;
                case 2: int4_row(2, xm, K, c, s, o, G, out); break;
                default: int4_row(1, xm, K, c, s, o, G, out); break;
            }
            for (i64 m = 0; m < mb; m++) y[(m0 + m) * N + n] = out[m] + (bias ? bias[n] : 0.0f);
        }
    }
}

/* 1 when built with AVX2, 0 for the plain C loops: reported by ``glassformer env`` */
int glassformer_quantized_uses_avx2(void) {
#ifdef __AVX2__
    return 1;
#else
    return 0;
#endif
}
