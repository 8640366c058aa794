/* Weight-only quantized matrix products for a few rows of float32 activations (decoding):

       y[m, n] = sum_k x[m, k] * w[n, k] + bias[n]

   with the weight stored as integer codes and per-group scales (and offsets), k in groups of G along the input
   (glassformer.nn.quantization states the formats); scales and offsets are IEEE half precision (16 bits: int4 at
   5 bits a weight with G = 32, Q4_1's size), widened to float32 a row at a time (halves_to_floats):

       int8   w[n, k] = codes[n, k] * scales[n, k / G]                       codes int8, one byte each
       int4   w[n, k] = codes[n, k] * scales[n, k / G] + offsets[n, k / G]   codes 0..15, two per byte

   int4 codes come in blocks of 32 along the input, 16 bytes per block: byte j holds code j in its low nibble and
   code j + 16 in its high nibble (the layout of llama.cpp's Q4_0 / Q4_1 blocks).

   The activations are first written as 16-bit fixed point, per block b of 32 along k (quantize_x):

       x[k] ~ xd[b] * xq[k],   xd[b] = max|x over b| / XMAX,   xq[k] = round(x[k] / xd[b])   (error <= xd[b] / 2)

   so that the integer codes multiply them exactly in integer arithmetic:

       sum_k x[k] w[n, k] = sum_b  s * xd[b] * (sum_{k in b} q[k] xq[k])  +  o * (sum_{k in b} x[k])

   (s, o the scale and offset of the group holding block b; o = 0 for int8; the sums of x are taken in float32, not
   from xq). The relative error of 16-bit fixed point is below 2^-15 of each block's largest value, finer than
   bfloat16's 2^-8. XMAX = 127 * 256 + 127, so that xq = 256 hi + lo with hi and lo both int8 (split_x): the form
   the VNNI path multiplies. Each output row n is shared out among threads (OpenMP, where the compiler has it).

   Paths, by what the compiler was told the CPU has (extension.py builds with -march=native, narrowed by
   GLASSFORMER_CPU), each computing the same integer sums, and each tested against the float reference:
     AVX512-VNNI  vpdpbusd: 64 products u8 x s8 per instruction, twice (hi and lo), for two blocks at once; up to 8
                  rows of x per pass over a weight row. int8 codes are read as u8 (q + 128) and 128 * sum(xq) is
                  taken off again (per group, as int4's offsets).
     AVX2         vpmaddwd on the 16-bit xq: 16 products per instruction; up to 4 rows of x per pass.
     NEON-dotprod (ARM with the dot-product extension) sdot: 16 products s8 x s8 per instruction, on hi and lo.
     NEON         (ARM) vmlal on the 16-bit xq: 4 products per instruction.
     C            the plain loops.

   ops.cpp multiplies with them (the op glassformer::quantized_linear) and decoder.h runs a whole decoding step of a
   Llama-style decoder with them (glassformer::decode_step); glassformer.backends.cpu.quantized and .decoder call both. */
#ifndef GLASSFORMER_QUANTIZED_H
#define GLASSFORMER_QUANTIZED_H
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

#if defined(GLASSFORMER_VNNI)
/* the codes of blocks a and a + 1 as 64 u8 in split_x's order (int8 codes + 128); `last`: block a alone */
static inline __attribute__((always_inline)) __m512i pair_codes(const int bits, const uint8_t *codes, i64 a,
                                                                bool last) {
    if (bits == 8) {
        const __m512i both = last ? _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(codes + a * BLOCK)))
                                  : _mm512_loadu_si512(codes + a * BLOCK);
        const __m512i order = _mm512_setr_epi64(0, 1, 4, 5, 2, 3, 6, 7);
        return _mm512_xor_si512(_mm512_permutexvar_epi64(order, both), _mm512_set1_epi8((char)0x80));
    }
    const __m256i bytes = last ? _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(codes + a * 16)))
                               : _mm256_loadu_si256((const __m256i *)(codes + a * 16));
    const __m256i low = _mm256_set1_epi8(0x0F);
    const __m256i lo = _mm256_and_si256(bytes, low), hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}
#endif

/* sum_b s[g(b)] xd[b] (sum_{k in b} q[k] xq[k]) for one output row (its codes and scales) and MB rows of x: the
   products of the codes, without int4's offsets (nor, in the VNNI path, int8's 128 * sum xq); bits (8 or 4) and MB
   are constants at each call. The VNNI path adds sum_g factor per[g] xg[m, g] (per: K / G halves of this weight
   row, read as they are stored; xg: K / G floats per row of x; both may be null) in the same sums: int4's offsets
   times the sums of x, or int8's correction */
static inline __attribute__((always_inline)) void codes_times_x(const int MB, const int bits, qx x,
                                                                const uint8_t *codes, const float *scales, i64 G,
                                                                float *out, const uint16_t *per = nullptr,
                                                                float factor = 1.0f, const float *xg = nullptr) {
    const i64 K = x.K, KB = K / BLOCK;
#if defined(GLASSFORMER_VNNI)
    const i64 pairs = (KB + 1) / 2, groups = K / G;
    const __m512i lanes = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
    __m512 acc[MAX_ROWS];
    for (int m = 0; m < MB; m++) acc[m] = _mm512_setzero_ps();
    for (i64 g0 = 0; per && g0 < groups; g0 += 16) {  /* 16 groups at a time, the last ones masked */
        const __mmask16 take = groups - g0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (groups - g0)) - 1);
        const __m512 v = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(take, per + g0)), _mm512_set1_ps(factor));
        for (int m = 0; m < MB; m++) acc[m] = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(take, xg + m * groups + g0), acc[m]);
    }
    i64 g = 0, left = G / BLOCK;  /* the group of the next block, and its blocks still to come (no division) */
    for (i64 p = 0; p < pairs; p++) {
        const i64 a = 2 * p;
        const bool last = a + 1 == KB;
        const __m512i c = pair_codes(bits, codes, a, last);
        const __m128 sA = _mm_load_ss(scales + g);  /* the scales of blocks a and a + 1, on their lanes */
        if (--left == 0) g++, left = G / BLOCK;
        const __m128 sB = last ? _mm_setzero_ps() : _mm_load_ss(scales + g);
        if (--left == 0) g++, left = G / BLOCK;
        const __m512 s = _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(_mm_unpacklo_ps(sA, sB)));
        for (int m = 0; m < MB; m++) {
            const i64 at = (m * pairs + p) * 64;
            __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c, _mm512_loadu_si512(x.hi + at));
            d = _mm512_dpbusd_epi32(_mm512_slli_epi32(d, 8), c, _mm512_loadu_si512(x.lo + at));
            const __m512 sd = _mm512_mul_ps(s, _mm512_loadu_ps(x.d16 + (m * pairs + p) * 16));
            acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), sd, acc[m]);
        }
    }
    for (int m = 0; m < MB; m++) out[m] = _mm512_reduce_add_ps(acc[m]);
#elif defined(__AVX2__)
    const int C = 4 / MB;  /* independent sums per row of x, so that the multiply-adds overlap */
    __m256 acc[4];
    for (int a = 0; a < 4; a++) acc[a] = _mm256_setzero_ps();
    i64 g = 0, left = G / BLOCK;  /* the group of block b, and its blocks still to come (no division per block) */
    for (i64 b0 = 0; b0 < KB; b0 += C) {
        for (int u = 0; u < C && b0 + u < KB; u++) {  /* u a constant after unrolling: acc stays in registers */
            const i64 b = b0 + u;
            const float s = scales[g];
            if (--left == 0) g++, left = G / BLOCK;
            __m256i first, second;  /* codes 0..15 and 16..31 of block b as int16 */
            if (bits == 8) {
                first = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(codes + b * BLOCK)));
                second = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(codes + b * BLOCK + 16)));
            } else {
                const __m128i bytes = _mm_loadu_si128((const __m128i *)(codes + b * 16)), low = _mm_set1_epi8(0x0F);
                first = _mm256_cvtepu8_epi16(_mm_and_si128(bytes, low));
                second = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(bytes, 4), low));
            }
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
#elif defined(GLASSFORMER_SDOT)
    float32x4_t acc[MAX_ROWS];
    for (int m = 0; m < MB; m++) acc[m] = vdupq_n_f32(0.0f);
    i64 g = 0, left = G / BLOCK;
    for (i64 b = 0; b < KB; b++) {
        int8x16_t c0, c1;  /* codes 0..15 and 16..31 of block b */
        if (bits == 8) {
            c0 = vld1q_s8((const int8_t *)codes + b * BLOCK), c1 = vld1q_s8((const int8_t *)codes + b * BLOCK + 16);
        } else {
            const uint8x16_t bytes = vld1q_u8(codes + b * 16);
            c0 = vreinterpretq_s8_u8(vandq_u8(bytes, vdupq_n_u8(0x0F))), c1 = vreinterpretq_s8_u8(vshrq_n_u8(bytes, 4));
        }
        const float s = scales[g];
        if (--left == 0) g++, left = G / BLOCK;
        for (int m = 0; m < MB; m++) {
            const int8_t *hi = x.hi + m * K + b * BLOCK, *lo = x.lo + m * K + b * BLOCK;
            int32x4_t d = vdotq_s32(vdotq_s32(vdupq_n_s32(0), c0, vld1q_s8(hi)), c1, vld1q_s8(hi + 16));
            d = vdotq_s32(vdotq_s32(vshlq_n_s32(d, 8), c0, vld1q_s8(lo)), c1, vld1q_s8(lo + 16));
            acc[m] = vfmaq_n_f32(acc[m], vcvtq_f32_s32(d), s * x.d[m * KB + b]);
        }
    }
    for (int m = 0; m < MB; m++) out[m] = vaddvq_f32(acc[m]);
#elif defined(__ARM_NEON)
    float32x4_t acc[MAX_ROWS];
    for (int m = 0; m < MB; m++) acc[m] = vdupq_n_f32(0.0f);
    i64 g = 0, left = G / BLOCK;
    for (i64 b = 0; b < KB; b++) {
        int16x8_t c[4];  /* codes 0-7, 8-15, 16-23, 24-31 of block b */
        if (bits == 8) {
            const int8x16_t first = vld1q_s8((const int8_t *)codes + b * BLOCK);
            const int8x16_t second = vld1q_s8((const int8_t *)codes + b * BLOCK + 16);
            c[0] = vmovl_s8(vget_low_s8(first)), c[1] = vmovl_s8(vget_high_s8(first));
            c[2] = vmovl_s8(vget_low_s8(second)), c[3] = vmovl_s8(vget_high_s8(second));
        } else {
            const uint8x16_t bytes = vld1q_u8(codes + b * 16);
            const uint8x16_t lo = vandq_u8(bytes, vdupq_n_u8(0x0F)), hi = vshrq_n_u8(bytes, 4);
            c[0] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(lo))), c[1] = vreinterpretq_s16_u16(vmovl_u8(vget_high_u8(lo)));
            c[2] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(hi))), c[3] = vreinterpretq_s16_u16(vmovl_u8(vget_high_u8(hi)));
        }
        const float s = scales[g];
        if (--left == 0) g++, left = G / BLOCK;
        for (int m = 0; m < MB; m++) {
            const int16_t *xq = x.q + m * K + b * BLOCK;
            int32x4_t dot = vdupq_n_s32(0);
            for (int j = 0; j < 4; j++) {
                const int16x8_t v = vld1q_s16(xq + 8 * j);
                dot = vmlal_s16(dot, vget_low_s16(c[j]), vget_low_s16(v));
                dot = vmlal_s16(dot, vget_high_s16(c[j]), vget_high_s16(v));
            }
            acc[m] = vmlaq_n_f32(acc[m], vcvtq_f32_s32(dot), s * x.d[m * KB + b]);
        }
    }
    for (int m = 0; m < MB; m++) out[m] = vaddvq_f32(acc[m]);
#else
    for (int m = 0; m < MB; m++) {
        float acc = 0.0f;
        for (i64 b = 0, per = G / BLOCK; b < KB; b++) {  /* per: blocks per group */
            int32_t dot = 0;
            for (int j = 0; j < BLOCK; j++) {
                const int32_t q = bits == 8 ? (int32_t)(int8_t)codes[b * BLOCK + j]
                                            : (j < 16 ? codes[b * 16 + j] & 15 : codes[b * 16 + j - 16] >> 4);
                dot += q * x.q[m * K + b * BLOCK + j];
            }
            acc += (float)dot * (scales[b / per] * x.d[m * KB + b]);
        }
        out[m] = acc;
    }
#endif
}

/* one output row of int8 weights (codes, scales of this row) for MB rows of x */
static inline __attribute__((always_inline)) void int8_row(const int MB, qx x, const int8_t *codes,
                                                           const float *scales, const uint16_t *scale_halves, i64 G,
                                                           float *out) {
#ifdef GLASSFORMER_VNNI  /* the codes were read as q + 128: take 128 s[g] sum_{b in g} xd[b] sum xq off again */
    codes_times_x(MB, 8, x, (const uint8_t *)codes, scales, G, out, scale_halves, -128.0f, x.gqsum);
#else
    (void)scale_halves;
    codes_times_x(MB, 8, x, (const uint8_t *)codes, scales, G, out);
#endif
}

/* one output row of int4 weights for MB rows of x: the codes' products, plus o · (sum of x) per group */
static inline __attribute__((always_inline)) void int4_row(const int MB, qx x, const uint8_t *codes,
                                                           const float *scales, const float *offsets,
                                                           const uint16_t *offset_halves, i64 G, float *out) {
#ifdef GLASSFORMER_VNNI  /* the offsets read as halves (the floats just written to the stack would be read in
                            wider loads than they were stored in: the store could not be forwarded) */
    (void)offsets;
    codes_times_x(MB, 4, x, codes, scales, G, out, offset_halves, 1.0f, x.gsum);
#else
    (void)offset_halves;
    codes_times_x(MB, 4, x, codes, scales, G, out);
    for (int m = 0; m < MB; m++) out[m] += dot_f32(offsets, x.gsum + m * (x.K / G), x.K / G);
#endif
}

/* one quantized matrix (N, K): kind 8 or 4, codes, scales (N, K / G), offsets (N, K / G) for int4, both halves */
typedef struct {
    i64 kind, N, K, G;
    const void *codes;
    const uint16_t *scales, *offsets;
} qmatrix;

/* an IEEE half (its 16 bits) as a float */
static inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
    uint32_t bits = sign;
    if (exponent == 0x1F) bits |= 0x7F800000 | (mantissa << 13);                  /* infinity, NaN */
    else if (exponent != 0) bits |= ((exponent + 112) << 23) | (mantissa << 13);  /* normal: bias 15 -> 127 */
    else if (mantissa != 0) {                                                      /* subnormal: mantissa 2^-24 */
        const float f = (float)mantissa * 5.9604644775390625e-8f;
        uint32_t magnitude;
        memcpy(&magnitude, &f, sizeof magnitude);
        bits |= magnitude;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
#endif
}

/* n halves widened to floats */
static inline void halves_to_floats(const uint16_t *h, i64 n, float *out) {
    i64 i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
#endif
    for (; i < n; i++) out[i] = half_to_float(h[i]);
}

/* one output row n for mb (a constant) rows of x */
static inline __attribute__((always_inline)) void qmatrix_row(const int mb, const qmatrix *w, qx x, i64 n,
                                                              float *out) {
    const i64 groups = w->K / w->G;
    float s[MAX_GROUPS], o[MAX_GROUPS];
    halves_to_floats(w->scales + n * groups, groups, s);
    if (w->kind == 8) {
        int8_row(mb, x, (const int8_t *)w->codes + n * w->K, s, w->scales + n * groups, w->G, out);
        return;
    }
#ifndef GLASSFORMER_VNNI
    halves_to_floats(w->offsets + n * groups, groups, o);
#endif
    int4_row(mb, x, (const uint8_t *)w->codes + n * (w->K / 2), s, o, w->offsets + n * groups, w->G, out);
}

/* rows n0 <= n < n1 of the weight in float32: out (N, K) = q · s (+ o), the formula the products stand for */
static inline void dequantize_rows(const qmatrix *w, i64 n0, i64 n1, float *out) {
    const i64 K = w->K, G = w->G, groups = K / G;
    for (i64 n = n0; n < n1; n++) {
        float s[MAX_GROUPS], o[MAX_GROUPS];
        halves_to_floats(w->scales + n * groups, groups, s);
        if (w->offsets) halves_to_floats(w->offsets + n * groups, groups, o);
        float *row = out + n * K;
        if (w->kind == 8) {
            const int8_t *q = (const int8_t *)w->codes + n * K;
            for (i64 g = 0; g < groups; g++)
                for (i64 k = g * G; k < (g + 1) * G; k++) row[k] = (float)q[k] * s[g];
            continue;
        }
        const uint8_t *bytes = (const uint8_t *)w->codes + n * (K / 2);
        for (i64 b = 0; b < K / BLOCK; b++) {  /* byte j of block b: codes j (low nibble) and j + 16 (high) */
            const float scale = s[b * BLOCK / G], offset = o[b * BLOCK / G];
            for (int j = 0; j < 16; j++) {
                row[b * BLOCK + j] = (float)(bytes[b * 16 + j] & 15) * scale + offset;
                row[b * BLOCK + 16 + j] = (float)(bytes[b * 16 + j] >> 4) * scale + offset;
            }
        }
    }
}

/* rows n of y[m, n] for the rows n0 <= n < n1 of the weight and all M rows of x: the weight rows in chunks of CHUNK
   (a chunk stays in cache while every block of MAX_ROWS rows of x passes over it, and each block's quantized rows, a
   few KB, stay in the first-level cache while the chunk's rows pass: the weight is read from memory once, and x from
   the nearest cache however many rows it has) */
#define CHUNK 16
static inline void qmatrix_rows(const qmatrix *w, qx x, i64 M, i64 n0, i64 n1, const float *bias, float *y, i64 ldy,
                                int add) {
    const i64 K = w->K, groups = K / w->G;
    for (i64 c0 = n0; c0 < n1; c0 += CHUNK) {
        const i64 c1 = c0 + CHUNK < n1 ? c0 + CHUNK : n1;
        for (i64 m0 = 0, mb; m0 < M; m0 += mb) {
            mb = M - m0 >= MAX_ROWS ? MAX_ROWS : M - m0 >= 4 ? 4 : M - m0 >= 2 ? 2 : 1;
            qx xm = {x.q + m0 * K, x.d + m0 * (K / BLOCK), x.gsum + m0 * groups, x.hi, x.lo, x.d16, x.gqsum, K};
#ifdef GLASSFORMER_VNNI
            const i64 pairs = (K / BLOCK + 1) / 2;
            xm.hi += m0 * pairs * 64, xm.lo += m0 * pairs * 64, xm.d16 += m0 * pairs * 16, xm.gqsum += m0 * groups;
#elif defined(GLASSFORMER_SDOT)
            xm.hi += m0 * K, xm.lo += m0 * K;
#endif
            for (i64 n = c0; n < c1; n++) {
                float out[MAX_ROWS];
                switch (mb) {
#if MAX_ROWS == 8
                    case 8: qmatrix_row(8, w, xm, n, out); break;
#endif
                    case 4: qmatrix_row(4, w, xm, n, out); break;
                    case 2: qmatrix_row(2, w, xm, n, out); break;
                    default: qmatrix_row(1, w, xm, n, out); break;
                }
                for (i64 m = 0; m < mb; m++) {
                    const float v = out[m] + (bias ? bias[n] : 0.0f);
                    y[(m0 + m) * ldy + n] = add ? y[(m0 + m) * ldy + n] + v : v;
                }
            }
        }
    }
}

#endif
