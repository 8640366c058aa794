/* The activations of the quantized products (quantized.h) as 16-bit fixed point, per block b of 32 along k
   (quantize_x):

       x[k] ~ xd[b] * xq[k],   xd[b] = max|x over b| / XMAX,   xq[k] = round(x[k] / xd[b])   (error <= xd[b] / 2)

   so that the integer codes multiply them exactly in integer arithmetic:

       sum_k x[k] w[n, k] = sum_b  s * xd[b] * (sum_{k in b} q[k] xq[k])  +  o * (sum_{k in b} x[k])

   (s, o the scale and offset of the group holding block b; o = 0 for int8; the sums of x are taken in float32, not
   from xq). The relative error of 16-bit fixed point is below 2^-15 of each block's largest value, finer than
   bfloat16's 2^-8. XMAX = 127 * 256 + 127, so that xq = 256 hi + lo with hi and lo both int8 (split_x): the form
   the VNNI path multiplies; the NEON-dotprod path takes hi and lo too, AVX2 and NEON xq itself. */
#ifndef GLASSFORMER_FIXED_POINT_H
#define GLASSFORMER_FIXED_POINT_H
#include "simd.h"

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
        xsum[b] = hsum(sum);
        xd[b] = top / XMAX;
        const __m256 inv = _mm256_set1_ps(top > 0.0f ? XMAX / top : 0.0f);
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
        const float inv = top > 0.0f ? XMAX / top : 0.0f;
        for (int j = 0; j < BLOCK; j++) xq[b * BLOCK + j] = (int16_t)lrintf(xb[j] * inv);
        xd[b] = top / XMAX;
        xsum[b] = sum;
#endif
    }
}

/* per-block sums (K / 32 of them) added up per group of G: K / G sums */
static inline void group_sums(const float *sums, i64 K, i64 G, float *gsum) {
    for (i64 g = 0; g < K / G; g++) {
        float sum = 0.0f;
        for (i64 b = g * G / BLOCK; b < (g + 1) * G / BLOCK; b++) sum += sums[b];
        gsum[g] = sum;
    }
}

/* x quantized for a product with a weight of groups G: M rows of K, in the forms the paths read */
typedef struct {
    const int16_t *q;          /* (M, K) xq */
    const float *d, *gsum;     /* (M, K / 32) xd; (M, K / G) sums of x per group */
    const int8_t *hi, *lo;     /* xq = 256 hi + lo: VNNI (M, pairs * 64), blocks paired (split_x); SDOT (M, K) */
    const float *d16, *gqsum;  /* VNNI: (M, pairs, 16) xd per lane; (M, K / G) sum_b xd[b] sum_{k in b} xq[k] */
    i64 K;
} qx;

/* Room for M rows of at most K activations in every form: made once per product (or per decoding step) */
struct xspace {
    std::vector<int16_t> q;
    std::vector<int8_t> hi, lo;
    std::vector<float> d, xsum, gsum, d16, gqsum;
    xspace(i64 M, i64 K)
        : q(M * K), d(M * (K / BLOCK)), xsum(M * (K / BLOCK)), gsum(M * (K / BLOCK)), gqsum(M * (K / BLOCK)) {
#ifdef GLASSFORMER_VNNI
        const i64 pairs = (K / BLOCK + 1) / 2;
        hi.resize(M * pairs * 64), lo.resize(M * pairs * 64), d16.resize(M * pairs * 16);
#elif defined(GLASSFORMER_SDOT)
        hi.resize(M * K), lo.resize(M * K);
#endif
    }
};

#ifdef GLASSFORMER_VNNI
/* One row of xq (K) as hi and lo int8 (xq = 256 hi + lo), the blocks taken two at a time, a pair (A, B) as 64 bytes
   in the order A 0..15, B 0..15, A 16..31, B 16..31 (the order int4 codes unpack to; an odd last block pairs with
   zeros); d16: each pair's xd per lane of 32-bit sums (lanes 0-3 and 8-11 sum block A, 4-7 and 12-15 block B);
   qsum: per block, xd[b] * sum_{k in b} xq[k] */
static inline void split_x(const int16_t *xq, const float *xd, i64 K, int8_t *hi, int8_t *lo, float *d16,
                           float *qsum) {
    const i64 KB = K / BLOCK;
    const __m512i round = _mm512_set1_epi16(128);
    for (i64 p = 0; p < (KB + 1) / 2; p++) {
        const i64 a = 2 * p;
        const __m512i A = _mm512_loadu_si512(xq + a * BLOCK);
        const __m512i B = a + 1 < KB ? _mm512_loadu_si512(xq + (a + 1) * BLOCK) : _mm512_setzero_si512();
        const __m512i hA = _mm512_srai_epi16(_mm512_add_epi16(A, round), 8);
        const __m512i hB = _mm512_srai_epi16(_mm512_add_epi16(B, round), 8);
        const __m512i lA = _mm512_sub_epi16(A, _mm512_slli_epi16(hA, 8));
        const __m512i lB = _mm512_sub_epi16(B, _mm512_slli_epi16(hB, 8));
        const __m512i order = _mm512_setr_epi64(0, 1, 4, 5, 2, 3, 6, 7);
        const __m512i h = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(hA)), _mm512_cvtepi16_epi8(hB), 1);
        const __m512i l = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi16_epi8(lA)), _mm512_cvtepi16_epi8(lB), 1);
        _mm512_storeu_si512(hi + p * 64, _mm512_permutexvar_epi64(order, h));
        _mm512_storeu_si512(lo + p * 64, _mm512_permutexvar_epi64(order, l));
        const float dA = xd[a], dB = a + 1 < KB ? xd[a + 1] : 0.0f;
        for (int j = 0; j < 16; j++) d16[p * 16 + j] = (j / 4) % 2 == 0 ? dA : dB;
        qsum[a] = dA * (float)_mm512_reduce_add_epi32(_mm512_madd_epi16(A, _mm512_set1_epi16(1)));
        if (a + 1 < KB) qsum[a + 1] = dB * (float)_mm512_reduce_add_epi32(_mm512_madd_epi16(B, _mm512_set1_epi16(1)));
    }
}
#endif

/* row m of x (K floats) as 16-bit fixed point (and its other forms) for a weight of groups G, written into space;
   rows are independent: threads may write rows of their own */
static inline void quantize_row(const float *x, i64 m, i64 K, i64 G, xspace &space) {
    const i64 KB = K / BLOCK;
    float *xsum = space.xsum.data() + m * KB;
    quantize_x(x, K, space.q.data() + m * K, space.d.data() + m * KB, xsum);
    group_sums(xsum, K, G, space.gsum.data() + m * (K / G));
#ifdef GLASSFORMER_VNNI
    const i64 pairs = (KB + 1) / 2;
    split_x(space.q.data() + m * K, space.d.data() + m * KB, K, space.hi.data() + m * pairs * 64,
            space.lo.data() + m * pairs * 64, space.d16.data() + m * pairs * 16, xsum);
    group_sums(xsum, K, G, space.gqsum.data() + m * (K / G));
#elif defined(GLASSFORMER_SDOT)
    for (i64 k = m * K; k < (m + 1) * K; k++) {  /* hi = round(xq / 256), lo = xq - 256 hi: both int8 */
        const int16_t h = (int16_t)((space.q[k] + 128) >> 8);
        space.hi[k] = (int8_t)h, space.lo[k] = (int8_t)(space.q[k] - 256 * h);
    }
#endif
}

/* the rows of K quantized in space, as the products read them */
static inline qx x_view(const xspace &space, i64 K) {
    const qx q = {space.q.data(), space.d.data(), space.gsum.data(), space.hi.data(), space.lo.data(),
                  space.d16.data(), space.gqsum.data(), K};
    return q;
}

#endif
