/* Weight-only quantized matrix products for a few rows of float32 activations (decoding):

       y[m, n] = sum_k x[m, k] * w[n, k] + bias[n]

   with the weight stored as integer codes and per-group scales (and offsets), k in groups of G along the input
   (glassformer.nn.quantization states the formats); scales and offsets are IEEE half precision (16 bits: int4 at
   5 bits a weight with G = 32, Q4_1's size), widened to float32 a row at a time (halves_to_floats):

       int8   w[n, k] = codes[n, k] * scales[n, k / G]                       codes int8, one byte each
       int4   w[n, k] = codes[n, k] * scales[n, k / G] + offsets[n, k / G]   codes 0..15, two per byte

   int4 codes come in blocks of 32 along the input, 16 bytes per block: byte j holds code j in its low nibble and
   code j + 16 in its high nibble (the layout of llama.cpp's Q4_0 / Q4_1 blocks).

   The activations are first written as 16-bit fixed point per block of 32 (fixed_point.h has the formula), so that
   the integer codes multiply them exactly in integer arithmetic. Each output row n is shared out among threads
   (OpenMP, where the compiler has it).

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
   decoder with them (glassformer::decode_step); glassformer.backends.cpu.quantized and .decoder call both. */
#ifndef GLASSFORMER_QUANTIZED_H
#define GLASSFORMER_QUANTIZED_H
#include "fixed_point.h"

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
