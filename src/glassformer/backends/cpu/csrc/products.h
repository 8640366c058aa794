/* The quantized products of quantized.h, with the activations in one of two forms, chosen per call:

       16-bit   x as 16-bit fixed point per block of 32 (quantized.h: quantize_row, qmatrix_rows), the integer codes
                times xq in integer arithmetic: within ~2^-14 of each block's largest value. Every path, every CPU.
       bf16     x rounded to bfloat16 (8 bits of mantissa, to nearest even), each pair of blocks of two weight rows
                widened to bfloat16 once per pass over up to 8 rows of x, and multiplied in pairs with float32 sums
                (AVX512-BF16's vdpbf16ps: 32 products per instruction, no scale per block in the inner loop); from
                OUTER_MIN_ROWS rows as outer products of each chunk of 16 weight rows laid out word by word
                (bf16_outer_products: no horizontal sums):

                    int4   w[n, k] = bf16(codes[n, k] * s + o)    the 16 values of a block made once, then looked up
                    int8   w[n, k] = bf16(codes[n, k] * s)

                Products of fewer than BF16_MIN_ROWS rows, and every product where this build does not multiply
                bfloat16 (no AVX512-BF16), take the 16-bit form: finer (and, for a row or two, faster: widening the
                weights costs more than the products save).

   A pair of blocks (A, B) of 64 weights is laid out as A 0..15, B 0..15, A 16..31, B 16..31 in both x and w (the
   order int4 codes unpack to; an odd last block pairs with zeros). glassformer::quantized_linear and
   glassformer::decode_step take `bf16` (glassformer.nn.quantization: activations="bf16"); glassformer::bf16_dot says
   whether it is multiplied so here. */
#ifndef GLASSFORMER_PRODUCTS_H
#define GLASSFORMER_PRODUCTS_H
#include "quantized.h"

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define GLASSFORMER_BF16_DOT 1
#define BF16_ROWS 8 /* rows of x per pass over two weight rows */

/* row x (K floats, K a multiple of 32) as bfloat16 in pairs of blocks, 64 values a pair (the order above) */
static inline void bf16_row(const float *x, i64 K, uint16_t *out) {
    const i64 KB = K / BLOCK;
    for (i64 p = 0; p < (KB + 1) / 2; p++) {
        const float *a = x + 2 * p * BLOCK, *b = a + BLOCK;
        const bool last = 2 * p + 1 == KB;
        const __m512 b0 = last ? _mm512_setzero_ps() : _mm512_loadu_ps(b);
        const __m512 b1 = last ? _mm512_setzero_ps() : _mm512_loadu_ps(b + 16);
        /* cvtne2ps_pbh(hi, lo): lanes 0-15 from lo, 16-31 from hi */
        _mm512_storeu_si512(out + p * 64, (__m512i)_mm512_cvtne2ps_pbh(b0, _mm512_loadu_ps(a)));
        _mm512_storeu_si512(out + p * 64 + 32, (__m512i)_mm512_cvtne2ps_pbh(b1, _mm512_loadu_ps(a + 16)));
    }
}

/* sixteen floats f(q) = q * s + o for the codes of 16 bytes (int8, or widened int4 codes) */
static inline __attribute__((always_inline)) __m512 widened(__m128i bytes, bool is_signed, float s) {
    const __m512i q = is_signed ? _mm512_cvtepi8_epi32(bytes) : _mm512_cvtepu8_epi32(bytes);
    return _mm512_mul_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(s));
}

/* the weights of blocks a and a + 1 of a row in bfloat16, in the pair order: *first A 0..15, B 0..15; *second
   A 16..31, B 16..31. sA, oA, sB, oB: the blocks' scales and offsets (0 for an absent B: `last`) */
static inline __attribute__((always_inline)) void pair_weights(const int bits, const uint8_t *codes, i64 a, bool last,
                                                               float sA, float oA, float sB, float oB,
                                                               __m512i *first, __m512i *second) {
    if (bits == 4) {  /* a block's 16 possible values, looked up by code: B's codes index the table's upper half */
        const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const __m512 tA = _mm512_fmadd_ps(iota, _mm512_set1_ps(sA), _mm512_set1_ps(oA));
        const __m512 tB = _mm512_fmadd_ps(iota, _mm512_set1_ps(sB), _mm512_set1_ps(oB));
        const __m512i table = (__m512i)_mm512_cvtne2ps_pbh(tB, tA);
        const __m256i bytes = last ? _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(codes + a * 16)))
                                   : _mm256_loadu_si256((const __m256i *)(codes + a * 16));
        const __m256i low = _mm256_set1_epi8(0x0F);
        const __m512i upper = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(16), 1);
        const __m512i lo = _mm512_cvtepu8_epi16(_mm256_and_si256(bytes, low));
        const __m512i hi = _mm512_cvtepu8_epi16(_mm256_and_si256(_mm256_srli_epi16(bytes, 4), low));
        *first = _mm512_permutexvar_epi16(_mm512_or_si512(lo, upper), table);
        *second = _mm512_permutexvar_epi16(_mm512_or_si512(hi, upper), table);
        return;
    }
    const int8_t *A = (const int8_t *)codes + a * BLOCK, *B = A + BLOCK;
    const __m128i a0 = _mm_loadu_si128((const __m128i *)A), a1 = _mm_loadu_si128((const __m128i *)(A + 16));
    const __m128i b0 = last ? _mm_setzero_si128() : _mm_loadu_si128((const __m128i *)B);
    const __m128i b1 = last ? _mm_setzero_si128() : _mm_loadu_si128((const __m128i *)(B + 16));
    *first = (__m512i)_mm512_cvtne2ps_pbh(widened(b0, true, sB), widened(a0, true, sA));
    *second = (__m512i)_mm512_cvtne2ps_pbh(widened(b1, true, sB), widened(a1, true, sA));
}

/* the groups of pair p's blocks A and B, followed by g (the group of the next block) and left (its blocks still to
   come) — no division per block; pairs must come in order */
static inline __attribute__((always_inline)) void pair_groups(i64 per, i64 *g, i64 *left, i64 *gA, i64 *gB) {
    *gA = *g;
    if (--*left == 0) ++*g, *left = per;
    *gB = *g;
    if (--*left == 0) ++*g, *left = per;
}

/* pair_weights of pair p of a row whose codes start at `codes`, with the row's scales s and offsets o (floats) of
   groups gA and gB (an absent B: 0) */
static inline __attribute__((always_inline)) void row_pair(int bits, const uint8_t *codes, i64 p, bool last,
                                                           const float *s, const float *o, i64 gA, i64 gB,
                                                           __m512i *first, __m512i *second) {
    const float sA = s[gA], oA = bits == 4 ? o[gA] : 0.0f;
    const float sB = last ? 0.0f : s[gB], oB = last || bits != 4 ? 0.0f : o[gB];
    pair_weights(bits, codes, 2 * p, last, sA, oA, sB, oB, first, second);
}

/* row n's scales and offsets as floats (s, o: MAX_GROUPS each), and where its codes start */
static inline __attribute__((always_inline)) const uint8_t *row_scales(const qmatrix *w, i64 n, float *s, float *o) {
    const i64 K = w->K, groups = K / w->G;
    halves_to_floats(w->scales + n * groups, groups, s);
    if (w->kind == 4) halves_to_floats(w->offsets + n * groups, groups, o);
    return (const uint8_t *)w->codes + n * (w->kind == 4 ? K / 2 : K);
}

/* rows n0 .. n0 + nr - 1 of the weight widened to bfloat16 once, for several blocks of x: pair p of row j at
   wb[2 (j pairs + p)] (first) and wb[2 (j pairs + p) + 1] (second), as pair_weights makes them */
static inline void widen_rows(const qmatrix *w, i64 n0, i64 nr, __m512i *wb) {
    const i64 KB = w->K / BLOCK, pairs = (KB + 1) / 2, per = w->G / BLOCK;
    float s[MAX_GROUPS], o[MAX_GROUPS];
    for (i64 j = 0; j < nr; j++) {
        const uint8_t *codes = row_scales(w, n0 + j, s, o);
        i64 g = 0, left = per, gA, gB;
        for (i64 p = 0; p < pairs; p++) {
            pair_groups(per, &g, &left, &gA, &gB);
            __m512i *at = wb + 2 * (j * pairs + p);
            row_pair((int)w->kind, codes, p, 2 * p + 1 == KB, s, o, gA, gB, at, at + 1);
        }
    }
}

/* acc[j][m] += the products of pair p of weight rows j < nr (first[j], second[j]) and of the mb rows of x in
   bfloat16 (xb: mb rows of pairs * 64) */
static inline __attribute__((always_inline)) void pair_products(const int nr, const int mb, const __m512i *first,
                                                                const __m512i *second, const uint16_t *xb, i64 pairs,
                                                                i64 p, __m512 (*acc)[BF16_ROWS]) {
    for (int m = 0; m < mb; m++) {
        const uint16_t *x = xb + (m * pairs + p) * 64;
        const __m512bh x0 = (__m512bh)_mm512_loadu_si512(x), x1 = (__m512bh)_mm512_loadu_si512(x + 32);
        for (int j = 0; j < nr; j++) {
            acc[j][m] = _mm512_dpbf16_ps(acc[j][m], (__m512bh)first[j], x0);
            acc[j][m] = _mm512_dpbf16_ps(acc[j][m], (__m512bh)second[j], x1);
        }
    }
}

/* output rows n0 .. n0 + nr - 1 (nr <= 2 and mb <= BF16_ROWS, constants) for mb rows of x in bfloat16 (xb: mb rows
   of pairs * 64), into out[j * BF16_ROWS + m]: each weight pair widened once for mb rows — here, or already by
   widen_rows (wb: at row n0's first pair; the same values, the same sums) —, each pair of x read once for nr
   weight rows */
static inline __attribute__((always_inline)) void bf16_products_rows(const int nr, const int mb, const qmatrix *w,
                                                                     const __m512i *wb, const uint16_t *xb, i64 n0,
                                                                     float *out) {
    const i64 KB = w->K / BLOCK, pairs = (KB + 1) / 2, per = w->G / BLOCK;
    __m512 acc[2][BF16_ROWS];
    __m512i first[2], second[2];
    for (int j = 0; j < nr; j++)
        for (int m = 0; m < mb; m++) acc[j][m] = _mm512_setzero_ps();
    if (wb) {
        for (i64 p = 0; p < pairs; p++) {
            for (int j = 0; j < nr; j++) first[j] = wb[2 * (j * pairs + p)], second[j] = wb[2 * (j * pairs + p) + 1];
            pair_products(nr, mb, first, second, xb, pairs, p, acc);
        }
    } else {
        float s[2][MAX_GROUPS], o[2][MAX_GROUPS];
        const uint8_t *codes[2];
        for (int j = 0; j < nr; j++) codes[j] = row_scales(w, n0 + j, s[j], o[j]);
        i64 g = 0, left = per, gA, gB;
        for (i64 p = 0; p < pairs; p++) {
            pair_groups(per, &g, &left, &gA, &gB);
            for (int j = 0; j < nr; j++)
                row_pair((int)w->kind, codes[j], p, 2 * p + 1 == KB, s[j], o[j], gA, gB, &first[j], &second[j]);
            pair_products(nr, mb, first, second, xb, pairs, p, acc);
        }
    }
    for (int j = 0; j < nr; j++)
        for (int m = 0; m < mb; m++) out[j * BF16_ROWS + m] = _mm512_reduce_add_ps(acc[j][m]);
}

/* Many rows of x: the products as outer products, with no horizontal sums. A chunk of up to 16 widened weight rows
   is laid out word by word (a word: the two bfloat16 values that vdpbf16ps multiplies as a pair), wt[q] holding
   word q of all 16 rows; each row m of x then adds, for every q, its word q times wt[q] into 16 sums (one a weight
   row) in one instruction — up to OUTER_ROWS rows of x at once, their sums in registers. */
#define OUTER_ROWS 12     /* rows of x per pass */
#define OUTER_MIN_ROWS 16 /* products of this many rows or more take it */

/* the 16 x 16 words of v transposed: out[q] holds word q of v[0..15] (three rounds of interleaving: words, pairs of
   words, then 128-bit lanes) */
static inline void transpose16(const __m512i *v, __m512i *out) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++)
        t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]), t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    for (int i = 0; i < 4; i++) {  /* u[4i + e]: lane L holds word 4L + e of v[4i .. 4i + 3] */
        u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]), u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int e = 0; e < 4; e++) {  /* word 4L + e: lane L of u[e], u[4 + e], u[8 + e], u[12 + e] */
        const __m512i a0 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0x88), a1 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0xDD);
        const __m512i b0 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0x88);
        const __m512i b1 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0xDD);
        out[e] = _mm512_shuffle_i32x4(a0, b0, 0x88), out[8 + e] = _mm512_shuffle_i32x4(a0, b0, 0xDD);
        out[4 + e] = _mm512_shuffle_i32x4(a1, b1, 0x88), out[12 + e] = _mm512_shuffle_i32x4(a1, b1, 0xDD);
    }
}

/* widen_rows' chunk (nr <= 16 rows of `pairs` pairs) word by word: wt[q] = word q of each row (rows past nr zero) */
static inline void interleave_rows(const __m512i *wb, i64 nr, i64 pairs, __m512i *wt) {
    __m512i v[16];
    for (i64 h = 0; h < 2 * pairs; h++) {  /* the first and second halves of each pair: 16 words of each row */
        for (i64 j = 0; j < 16; j++) v[j] = j < nr ? wb[2 * (j * pairs + h / 2) + h % 2] : _mm512_setzero_si512();
        transpose16(v, wt + 16 * h);
    }
}

/* y[m0 + r, c0 + j] (+)= the sums of MR rows of x (words, `words` a row) with the chunk wt, for j < nr */
template <int MR>
static inline void outer_rows(const __m512i *wt, i64 words, const uint32_t *x, i64 m0, i64 c0, i64 nr,
                              const float *bias, float *y, i64 ldy, int add) {
    __m512 acc[MR];
    for (int r = 0; r < MR; r++) acc[r] = _mm512_setzero_ps();
    const uint32_t *xm = x + m0 * words;
    for (i64 q = 0; q < words; q++) {
        const __m512bh w = (__m512bh)_mm512_load_si512(wt + q);
        for (int r = 0; r < MR; r++)
            acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32((int)xm[r * words + q]), w);
    }
    const __mmask16 take = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1);
    const __m512 b = bias ? _mm512_maskz_loadu_ps(take, bias + c0) : _mm512_setzero_ps();
    for (int r = 0; r < MR; r++) {
        float *at = y + (m0 + r) * ldy + c0;
        __m512 v = _mm512_add_ps(acc[r], b);
        if (add) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(take, at));
        _mm512_mask_storeu_ps(at, take, v);
    }
}

/* bf16_products for many rows: each chunk of 16 weight rows widened and laid out word by word once, then every block
   of rows of x passes over it. False (nothing done) where its memory could not be had. */
static inline bool bf16_outer_products(const qmatrix *w, const uint16_t *xb, i64 M, i64 n0, i64 n1, const float *bias,
                                       float *y, i64 ldy, int add) {
    const i64 pairs = (w->K / BLOCK + 1) / 2, words = pairs * 32;
    __m512i *wb = (__m512i *)aligned_alloc(64, sizeof(__m512i) * 2 * 16 * pairs);
    __m512i *wt = (__m512i *)aligned_alloc(64, sizeof(__m512i) * words);
    if (!wb || !wt) {
        free(wb), free(wt);
        return false;
    }
    const uint32_t *x = (const uint32_t *)xb;
    for (i64 c0 = n0; c0 < n1; c0 += 16) {
        const i64 nr = n1 - c0 < 16 ? n1 - c0 : 16;
        widen_rows(w, c0, nr, wb);
        interleave_rows(wb, nr, pairs, wt);
        for (i64 m0 = 0, mb; m0 < M; m0 += mb) {
            const i64 rest = M - m0;
            mb = rest >= OUTER_ROWS ? OUTER_ROWS : rest >= 8 ? 8 : rest >= 4 ? 4 : rest >= 2 ? 2 : 1;
            switch (mb) {
                case OUTER_ROWS: outer_rows<OUTER_ROWS>(wt, words, x, m0, c0, nr, bias, y, ldy, add); break;
                case 8: outer_rows<8>(wt, words, x, m0, c0, nr, bias, y, ldy, add); break;
                case 4: outer_rows<4>(wt, words, x, m0, c0, nr, bias, y, ldy, add); break;
                case 2: outer_rows<2>(wt, words, x, m0, c0, nr, bias, y, ldy, add); break;
                default: outer_rows<1>(wt, words, x, m0, c0, nr, bias, y, ldy, add); break;
            }
        }
    }
    free(wb), free(wt);
    return true;
}

/* qmatrix_rows (quantized.h) with x in bfloat16: rows n0 <= n < n1 of y for all M rows of xb, the weight rows in
   chunks of CHUNK that each block of BF16_ROWS rows of x passes over, two weight rows at a time; where more than one
   block of x passes over a chunk, its rows widened once (widen_rows) rather than for every block */
static inline void bf16_products(const qmatrix *w, const uint16_t *xb, i64 M, i64 n0, i64 n1, const float *bias,
                                 float *y, i64 ldy, int add) {
    if (M >= OUTER_MIN_ROWS && bf16_outer_products(w, xb, M, n0, n1, bias, y, ldy, add)) return;
    const i64 pairs = (w->K / BLOCK + 1) / 2;
    /* a chunk's rows widened, where more than one block of x reuses them (without the memory: widened per block) */
    __m512i *wb = M > BF16_ROWS ? (__m512i *)aligned_alloc(64, sizeof(__m512i) * 2 * CHUNK * pairs) : nullptr;
    for (i64 c0 = n0; c0 < n1; c0 += CHUNK) {
        const i64 c1 = c0 + CHUNK < n1 ? c0 + CHUNK : n1;
        if (wb) widen_rows(w, c0, c1 - c0, wb);
        for (i64 m0 = 0, mb; m0 < M; m0 += mb) {
            const i64 rest = M - m0;
            mb = rest >= 8 ? 8 : rest >= 4 ? 4 : rest >= 2 ? 2 : 1;
            const uint16_t *x = xb + m0 * pairs * 64;
            for (i64 n = c0, nr; n < c1; n += nr) {
                float out[2 * BF16_ROWS];
                nr = c1 - n >= 2 ? 2 : 1;
                const __m512i *widened = wb ? wb + 2 * (n - c0) * pairs : nullptr;
                switch (nr * 100 + mb) {
                    case 208: bf16_products_rows(2, 8, w, widened, x, n, out); break;
                    case 204: bf16_products_rows(2, 4, w, widened, x, n, out); break;
                    case 202: bf16_products_rows(2, 2, w, widened, x, n, out); break;
                    case 201: bf16_products_rows(2, 1, w, widened, x, n, out); break;
                    case 108: bf16_products_rows(1, 8, w, widened, x, n, out); break;
                    case 104: bf16_products_rows(1, 4, w, widened, x, n, out); break;
                    case 102: bf16_products_rows(1, 2, w, widened, x, n, out); break;
                    default: bf16_products_rows(1, 1, w, widened, x, n, out); break;
                }
                for (i64 j = 0; j < nr; j++)
                    for (i64 m = 0; m < mb; m++) {
                        const float v = out[j * BF16_ROWS + m] + (bias ? bias[n + j] : 0.0f);
                        float *at = y + (m0 + m) * ldy + n + j;
                        *at = add ? *at + v : v;
                    }
            }
        }
    }
    free(wb);
}
#endif

#define BF16_MIN_ROWS 4 /* fewer rows take the 16-bit form */

/* Room for M rows of at most K activations in the form a call takes (made once per product or decoding step):
   bfloat16 where asked, this build multiplies it and M >= BF16_MIN_ROWS, else 16-bit fixed point */
struct xrows {
    bool bf16;                 /* the form: bfloat16, else 16-bit fixed point */
    xspace fixed;              /* the 16-bit form (quantized.h) */
    std::vector<uint16_t> b16; /* the bfloat16 form: (M, pairs * 64) */
    xrows(i64 M, i64 K, bool bf16_asked)
#ifdef GLASSFORMER_BF16_DOT
        : bf16(bf16_asked && M >= BF16_MIN_ROWS), fixed(bf16 ? 0 : M, K),
          b16(bf16 ? M * ((K / BLOCK + 1) / 2) * 64 : 0) {}
#else
        : bf16(false), fixed(M, K) { (void)bf16_asked; }
#endif
};

/* row m of x (K floats) in the form of `rows`, for a weight of groups G; rows are independent: threads may write
   rows of their own */
static inline void prepare_row(const float *x, i64 m, i64 K, i64 G, xrows &rows) {
#ifdef GLASSFORMER_BF16_DOT
    if (rows.bf16) return bf16_row(x, K, rows.b16.data() + m * ((K / BLOCK + 1) / 2) * 64);
#endif
    quantize_row(x, m, K, G, rows.fixed);
}

/* y[m, n] (+)= sum_k x[m, k] w[n, k] + bias[n] for the weight rows n0 <= n < n1 and the M rows prepared in `rows` */
static inline void products(const qmatrix *w, const xrows &rows, i64 M, i64 n0, i64 n1, const float *bias, float *y,
                            i64 ldy, int add) {
#ifdef GLASSFORMER_BF16_DOT
    if (rows.bf16) return bf16_products(w, rows.b16.data(), M, n0, n1, bias, y, ldy, add);
#endif
    qmatrix_rows(w, x_view(rows.fixed, w->K), M, n0, n1, bias, y, ldy, add);
}

/* whether bf16 calls multiply bfloat16 in this build (glassformer::bf16_dot) */
static inline bool bf16_dot() {
#ifdef GLASSFORMER_BF16_DOT
    return true;
#else
    return false;
#endif
}

#endif
