/* Weight-only quantized matrix products for a few rows of float32 activations (decoding):

       y[m, n] = sum_k x[m, k] * w[n, k] + bias[n]

   with the weight stored as integer codes and per-group float32 scales (and offsets), k in groups of G along the
   input (glassformer.nn.quantization states the formats):

       int8   w[n, k] = codes[n, k] * scales[n, k / G]                       codes int8, one byte each
       int4   w[n, k] = codes[n, k] * scales[n, k / G] + offsets[n, k / G]   codes 0..15, two per byte

   int4 codes come in blocks of 32 along the input, 16 bytes per block: byte j holds code j in its low nibble and
   code j + 16 in its high nibble (the layout of llama.cpp's Q4_0 / Q4_1 blocks).

   The activations are first written as 16-bit fixed point, per block b of 32 along k (quantize_x):

       x[k] ~ xd[b] * xq[k],   xd[b] = max|x over b| / 32767,   xq[k] = round(x[k] / xd[b])   (error <= xd[b] / 2)

   so that the integer codes multiply them exactly in integer arithmetic, 16 products per instruction:

       sum_k x[k] w[n, k] = sum_b  s * xd[b] * (sum_{k in b} q[k] xq[k])  +  o * (sum_{k in b} x[k])

   (s, o the scale and offset of the group holding block b; o = 0 for int8; the sums of x are taken in float32, not
   from xq). The relative error of 16-bit fixed point is below 2^-15 of each block's largest value, finer than
   bfloat16's 2^-8. Each output row n is shared out among threads (OpenMP, where the compiler has it). The AVX2 path
   and the plain C path compute the same formula, and glassformer tests both against its float reference.

   ops.cpp multiplies with them (the op glassformer::quantized_linear) and decoder.h runs a whole decoding step of a
   Llama-style decoder with them (glassformer::decode_step); glassformer.backends.cpu.quantized and .decoder call both. */
#ifndef GLASSFORMER_QUANTIZED_H
#define GLASSFORMER_QUANTIZED_H
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

typedef int64_t i64;
#define BLOCK 32

/* x (K floats, K a multiple of 32) -> xq (K int16), xd (K / 32 scales), xsum (K / 32 sums of x) */
static inline void quantize_x(const float *x, i64 K, int16_t *xq, float *xd, float *xsum) {
    for (i64 b = 0; b < K / BLOCK; b++) {
        const float *xb = x + b * BLOCK;
#ifdef __AVX2__
        const __m256 sign = _mm256_set1_ps(-0.0f);
        __m256 v[4], amax = _mm256_setzero_ps(), sum = _mm256_setzero_ps();
        for (int p = 0; p < 4; p++) {
            v[p] = _mm256_loadu_ps(xb + p * 8);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[p]));
            sum = _mm256_add_ps(sum, v[p]);
        }
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float top = _mm_cvtss_f32(m);
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        xsum[b] = _mm_cvtss_f32(s);
        xd[b] = top / 32767.0f;
        const __m256 inv = _mm256_set1_ps(top > 0.0f ? 32767.0f / top : 0.0f);
        for (int p = 0; p < 4; p += 2) {  /* round to nearest, pack to int16 (packs works per 128-bit lane) */
            __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(v[p], inv));
            __m256i c = _mm256_cvtps_epi32(_mm256_mul_ps(v[p + 1], inv));
            __m256i q = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, c), 0xD8);
            _mm256_storeu_si256((__m256i *)(xq + b * BLOCK + p * 8), q);
        }
#else
        float top = 0.0f, sum = 0.0f;
        for (int j = 0; j < BLOCK; j++) {
            top = fabsf(xb[j]) > top ? fabsf(xb[j]) : top;
            sum += xb[j];
        }
        const float inv = top > 0.0f ? 32767.0f / top : 0.0f;
        for (int j = 0; j < BLOCK; j++) xq[b * BLOCK + j] = (int16_t)lrintf(xb[j] * inv);
        xd[b] = top / 32767.0f;
        xsum[b] = sum;
#endif
    }
}

/* x quantized for a product with a weight of groups G: rows of K, their per-block scales and per-group sums */
typedef struct {
    const int16_t *q;
    const float *d, *gsum;
    i64 K;
} qx;

/* per-block sums of x (K / 32 of them) added up per group of G: K / G sums */
static inline void group_sums(const float *xsum, i64 K, i64 G, float *gsum) {
    for (i64 g = 0; g < K / G; g++) {
        float sum = 0.0f;
        for (i64 b = g * G / BLOCK; b < (g + 1) * G / BLOCK; b++) sum += xsum[b];
        gsum[g] = sum;
    }
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

#ifdef __AVX2__
/* the 32 codes of block b as two vectors of 16 int16: int8 codes 0..15 and 16..31 of their 32 bytes, or int4 codes
   0..15 (low nibbles) and 16..31 (high nibbles) of their 16 bytes; bits is a constant at each call */
static inline __attribute__((always_inline)) void block_codes(const int bits, const uint8_t *codes, i64 b,
                                                              __m256i *first, __m256i *second) {
    if (bits == 8) {
        *first = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(codes + b * BLOCK)));
        *second = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(codes + b * BLOCK + 16)));
    } else {
        const __m128i bytes = _mm_loadu_si128((const __m128i *)(codes + b * 16)), low = _mm_set1_epi8(0x0F);
        *first = _mm256_cvtepu8_epi16(_mm_and_si128(bytes, low));
        *second = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(bytes, 4), low));
    }
}
#else
/* code j (0..31) of block b */
static inline int32_t block_code(const int bits, const uint8_t *codes, i64 b, int j) {
    if (bits == 8) return (int32_t)(int8_t)codes[b * BLOCK + j];
    const uint8_t byte = codes[b * 16 + j % 16];
    return j < 16 ? byte & 15 : byte >> 4;
}
#endif

/* sum_b s[g(b)] xd[b] (sum_{k in b} q[k] xq[k]) for one output row (its codes and scales) and MB rows of x: the
   products of the codes, without int4's offsets; bits (8 or 4) and MB are constants at each call */
static inline __attribute__((always_inline)) void codes_times_x(const int MB, const int bits, qx x,
                                                                const uint8_t *codes, const float *scales, i64 G,
                                                                float *out) {
    const i64 K = x.K, KB = K / BLOCK;
#ifdef __AVX2__
    const int C = 4 / MB;  /* independent sums per row of x, so that the multiply-adds overlap */
    __m256 acc[4];
    for (int a = 0; a < 4; a++) acc[a] = _mm256_setzero_ps();
    i64 g = 0, left = G / BLOCK;  /* the group of block b, and its blocks still to come (no division per block) */
    for (i64 b0 = 0; b0 < KB; b0 += C) {
        for (int u = 0; u < C && b0 + u < KB; u++) {  /* u a constant after unrolling: acc stays in registers */
            const i64 b = b0 + u;
            const float s = scales[g];
            if (--left == 0) g++, left = G / BLOCK;
            __m256i first, second;
            block_codes(bits, codes, b, &first, &second);
            for (int m = 0; m < MB; m++) {
                const __m256i *xq = (const __m256i *)(x.q + m * K + b * BLOCK);
                __m256i dot = _mm256_add_epi32(_mm256_madd_epi16(first, _mm256_loadu_si256(xq)),
                                               _mm256_madd_epi16(second, _mm256_loadu_si256(xq + 1)));
                acc[m * C + u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(s * x.d[m * KB + b]),
                                                 acc[m * C + u]);
            }
        }
    }
    for (int m = 0; m < MB; m++) {
        __m256 sum = acc[m * C];
        for (int a = 1; a < C; a++) sum = _mm256_add_ps(sum, acc[m * C + a]);
        out[m] = hsum(sum);
    }
#else
    for (int m = 0; m < MB; m++) {
        float acc = 0.0f;
        for (i64 b = 0, per = G / BLOCK; b < KB; b++) {  /* per: blocks per group */
            int32_t dot = 0;
            for (int j = 0; j < BLOCK; j++) dot += block_code(bits, codes, b, j) * x.q[m * K + b * BLOCK + j];
            acc += (float)dot * (scales[per == 1 ? b : b / per] * x.d[m * KB + b]);
        }
        out[m] = acc;
    }
#endif
}

/* one output row of int8 weights (codes, scales of this row) for MB rows of x */
static inline __attribute__((always_inline)) void int8_row(const int MB, qx x, const int8_t *codes,
                                                           const float *scales, i64 G, float *out) {
    codes_times_x(MB, 8, x, (const uint8_t *)codes, scales, G, out);
}

/* one output row of int4 weights for MB rows of x: the codes' products, plus o · (sum of x) per group */
static inline __attribute__((always_inline)) void int4_row(const int MB, qx x, const uint8_t *codes,
                                                           const float *scales, const float *offsets, i64 G,
                                                           float *out) {
    codes_times_x(MB, 4, x, codes, scales, G, out);
    for (int m = 0; m < MB; m++) out[m] += dot_f32(offsets, x.gsum + m * (x.K / G), x.K / G);
}

/* one quantized matrix (N, K): kind 8 or 4, codes, scales (N, K / G), offsets (N, K / G) for int4 */
typedef struct {
    i64 kind, N, K, G;
    const void *codes;
    const float *scales, *offsets;
} qmatrix;

/* rows n of y[m, n] (m < M <= 4 at a time) for the rows n0 <= n < n1 of the weight */
static inline void qmatrix_rows(const qmatrix *w, qx x, i64 M, i64 n0, i64 n1, const float *bias, float *y, i64 ldy,
                         int add) {
    const i64 K = w->K, groups = K / w->G;
    for (i64 n = n0; n < n1; n++) {
        const float *s = w->scales + n * groups;
        for (i64 m0 = 0, mb; m0 < M; m0 += mb) {
            float out[4];
            mb = M - m0 >= 4 ? 4 : M - m0 >= 2 ? 2 : 1;
            qx xm = {x.q + m0 * K, x.d + m0 * (K / BLOCK), x.gsum + m0 * groups, K};
            if (w->kind == 8) {
                const int8_t *c = (const int8_t *)w->codes + n * K;
                switch (mb) {
                    case 4: int8_row(4, xm, c, s, w->G, out); break;
                    case 2: int8_row(2, xm, c, s, w->G, out); break;
                    default: int8_row(1, xm, c, s, w->G, out); break;
                }
            } else {
                const uint8_t *c = (const uint8_t *)w->codes + n * (K / 2);
                const float *o = w->offsets + n * groups;
                switch (mb) {
                    case 4: int4_row(4, xm, c, s, o, w->G, out); break;
                    case 2: int4_row(2, xm, c, s, o, w->G, out); break;
                    default: int4_row(1, xm, c, s, o, w->G, out); break;
                }
            }
            for (i64 m = 0; m < mb; m++) {
                const float v = out[m] + (bias ? bias[n] : 0.0f);
                y[(m0 + m) * ldy + n] = add ? y[(m0 + m) * ldy + n] + v : v;
            }
        }
    }
}

/* x (M, K) as 16-bit fixed point for a weight of groups G: xq (M, K), xd (M, K / 32), gsum (M, K / G) */
static inline qx quantize_rows(const float *x, i64 M, i64 K, i64 G, int16_t *xq, float *xd, float *xsum, float *gsum) {
    for (i64 m = 0; m < M; m++) {
        quantize_x(x + m * K, K, xq + m * K, xd + m * (K / BLOCK), xsum);
        group_sums(xsum, K, G, gsum + m * (K / G));
    }
    const qx q = {xq, xd, gsum, K};
    return q;
}

#endif
