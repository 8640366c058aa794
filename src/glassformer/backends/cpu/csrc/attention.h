/* The attention of the fused decoding step (decoder.h), for the rows of a step: where each row's keys and values lie
   in the cache (qrows: contiguous rows, or a paged cache's blocks through a block table; float32, or bfloat16 widened
   as it is read), and

       out = softmax(s · q K^T) V        over the positions a row attends to (its first .. its own)

   for tiles of rows: up to TILE_ROWS consecutive positions of one sequence (a prompt's chunk, a speculative block)
   read each key and value once. */
#ifndef GLASSFORMER_ATTENTION_H
#define GLASSFORMER_ATTENTION_H
#include "simd.h"

/* the sums of 16 vectors at once, out[j] = Σ_i v[j][i], each by adding halves until one lane is left (i and i + 8,
   then i and i + 4, …) — all 16 together: each step adds the halves of two vectors set side by side in one */
static inline f32x16 sums16(const f32x16 *v) {
    f32x16 w[8], x[4], y[2];
    for (int k = 0; k < 8; k++)  /* lanes 0-7: v[2k]'s 8 partial sums; 8-15: v[2k + 1]'s */
        w[k] = __builtin_shufflevector(v[2 * k], v[2 * k + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
               __builtin_shufflevector(v[2 * k], v[2 * k + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29,
                                       30, 31);
    for (int k = 0; k < 4; k++)  /* lanes 4i .. 4i + 3: v[4k + i]'s 4 partial sums */
        x[k] = __builtin_shufflevector(w[2 * k], w[2 * k + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
               __builtin_shufflevector(w[2 * k], w[2 * k + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30,
                                       31);
    for (int k = 0; k < 2; k++)  /* lanes 2i, 2i + 1: v[8k + i]'s 2 partial sums */
        y[k] = __builtin_shufflevector(x[2 * k], x[2 * k + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
               __builtin_shufflevector(x[2 * k], x[2 * k + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30,
                                       31);
    return __builtin_shufflevector(y[0], y[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
           __builtin_shufflevector(y[0], y[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

/* Where each of the B rows reads and writes in the cache: rows are sequences of their own lengths (a batch with left
   padding, or a server's slots). Row r writes its new key and value at position write_at[r], attends to positions
   first[r] .. write_at[r], and is rotated by the angle of position rotary_at[r] (its count of real tokens before).
   A row's positions lie in blocks of `block` positions, (kv_heads, block, head_dim) each: without a table, one
   block per row (block = max_length, row r's at row r · row_stride); with a table (a paged cache: a server's
   slots), position p of row r in block table[r · table_stride + p / block], at blocks · block_stride. */
typedef struct {
    const i64 *write_at, *first, *rotary_at;
    void *keys, *values;   /* layer 0 of the cache: float32, or bfloat16 (bf16) */
    i64 row_stride, layer_stride, block;
    const i64 *table;      /* null: contiguous rows */
    i64 table_stride, block_stride, table_width;
    int bf16;              /* the cache holds bfloat16: written rounded (to_bf16), read widened */
} qrows;

/* The positions of row r's block that holds position p, from p to the block's end or `last`, whichever is first;
   *at: where position p's head g starts in layer l, in values from the cache's start (its keys' and values' alike) */
static inline i64 kv_span(const qrows *rows, i64 l, i64 r, i64 g, i64 p, i64 last, i64 hd, i64 *at) {
    const i64 b = rows->block, in_block = p % b;
    const i64 where = rows->table ? rows->table[r * rows->table_stride + p / b] * rows->block_stride
                                  : r * rows->row_stride;  /* one block a row: p / b = 0 */
    *at = l * rows->layer_stride + where + (g * b + in_block) * hd;
    const i64 end = p - in_block + b - 1;
    return (end < last ? end : last) - p + 1;
}

/* write a position's key or value (n floats) at `at` in base (the cache's keys or values), rounded where it holds
   bfloat16 */
static inline void store_kv(const qrows *rows, void *base, i64 at, const float *x, i64 n) {
    if (!rows->bf16) {
        memcpy((float *)base + at, x, sizeof(float) * n);
        return;
    }
    bf16_t *out = (bf16_t *)base + at;
    for (i64 i = 0; i < n; i++) out[i] = to_bf16(x[i]);
}

#define TILE_ROWS 4 /* rows of one sequence (a prompt's chunk, a speculative block) that attend together */

/* columns c0 .. c0 + 16 C of out_i = inverse_i · Σ_p w_i[p] V[p] for the R rows i of a tile, over positions
   first..last of row r's value head g in layer l; w_i = scores + i · score_stride (zero past row i's own last
   position). Each value is read once for the R rows; C columns of 16 of each row summed in registers, positions two
   at a time into two sets of sums (so that no addition waits for the one before it) — a row's sums the same, in the
   same order, whatever R and C */
template <typename T, int C, int R>
static inline void weighted_values(const qrows *rows, i64 l, i64 r, i64 g, i64 first, i64 last, i64 head_dim, i64 c0,
                                   const float *scores, i64 score_stride, const float *inverse, float *out,
                                   i64 out_stride) {
    f32x16 a[R][C] = {}, b[R][C] = {};
    for (i64 p = first, n, at; p <= last; p += n) {
        n = kv_span(rows, l, r, g, p, last, head_dim, &at);
        const float *w = scores + (p - first);
        const T *v = (const T *)rows->values + at + c0;
        i64 j = 0;
        for (; j + 1 < n; j += 2)
            for (int c = 0; c < C; c++) {
                const f32x16 v0 = load16(v + j * head_dim + 16 * c), v1 = load16(v + (j + 1) * head_dim + 16 * c);
                for (int i = 0; i < R; i++) {
                    a[i][c] += w[i * score_stride + j] * v0;
                    b[i][c] += w[i * score_stride + j + 1] * v1;
                }
            }
        for (; j < n; j++)
            for (int c = 0; c < C; c++) {
                const f32x16 v0 = load16(v + j * head_dim + 16 * c);
                for (int i = 0; i < R; i++) a[i][c] += w[i * score_stride + j] * v0;
            }
    }
    for (int i = 0; i < R; i++)
        for (int c = 0; c < C; c++) {
            const f32x16 sum = (a[i][c] + b[i][c]) * inverse[i];
            memcpy(out + i * out_stride + c0 + 16 * c, &sum, sizeof sum);
        }
}

/* every column of the tile's R rows (head_dim a multiple of 16), as many columns a pass as the registers hold */
template <typename T, int R>
static void weighted_rows(const qrows *rows, i64 l, i64 r, i64 g, i64 first, i64 last, i64 head_dim,
                          const float *scores, i64 score_stride, const float *inverse, float *out, i64 out_stride) {
    constexpr int C = R <= 2 ? 4 : 2;
    i64 c0 = 0;
    for (; c0 + 16 * C <= head_dim; c0 += 16 * C)
        weighted_values<T, C, R>(rows, l, r, g, first, last, head_dim, c0, scores, score_stride, inverse, out,
                                 out_stride);
    for (; c0 < head_dim; c0 += 16)
        weighted_values<T, 1, R>(rows, l, r, g, first, last, head_dim, c0, scores, score_stride, inverse, out,
                                 out_stride);
}

/* For the R rows i of a tile (consecutive positions of one sequence: row i's query q + i · q_stride attends to
   positions first..last + i of row r's key/value head g in layer l): out_i (head_dim, at out + i · out_stride) =
   softmax(s · q_i K^T + b) V, b[p] = bias[last + i − p] (a bias by distance, T5's) where bias is given, else 0.
   scores + i · score_stride: room for last + R - first floats each. The positions are
   walked block by block (contiguous within a block); each key and value is read once for the tile. head_dim a
   multiple of 16: each q·k in vectors of 16, 16 keys at a time, and V in columns of 16 with the sums in registers;
   otherwise the plain loops (R = 1 only). A row's result is the same, bit for bit, whatever tile it is in. */
template <typename T>
static void attend_in(const float *q, i64 q_stride, i64 R, const qrows *rows, i64 l, i64 r, i64 g, i64 first,
                      i64 last, i64 head_dim, float scale, const float *bias, float *scores, i64 score_stride,
                      float *out, i64 out_stride) {
    const bool wide = head_dim % 16 == 0;
    const i64 end = last + R - 1; /* the tile's last position */
    const T *keys, *values;
    float inverse[TILE_ROWS];
    for (i64 p = first; wide && p <= end; p += 16) {  /* 16 keys at a time, across blocks (missing ones zero), their
                                                         sums halved together */
        const i64 m = end - p + 1 < 16 ? end - p + 1 : 16;
        const T *key[16];
        for (i64 jj = 0, n, at; jj < m; jj += n) {
            n = kv_span(rows, l, r, g, p + jj, p + m - 1, head_dim, &at);
            for (i64 u = 0; u < n; u++) key[jj + u] = (const T *)rows->keys + at + u * head_dim;
        }
        for (i64 i = 0; i < R; i++) {
            const float *qi = q + i * q_stride;
            f32x16 sum[16] = {};
            for (i64 k = 0; k < head_dim; k += 16) {
                const f32x16 qk = load16(qi + k);
                for (i64 jj = 0; jj < m; jj++) sum[jj] += qk * load16(key[jj] + k);
            }
            float dots[16];
            const f32x16 scaled = sums16(sum) * scale;
            memcpy(dots, &scaled, sizeof dots);
            memcpy(scores + i * score_stride + (p - first), dots, sizeof(float) * m);
        }
    }
    for (i64 p = first, n, at; !wide && p <= end; p += n) {
        n = kv_span(rows, l, r, g, p, end, head_dim, &at);
        keys = (const T *)rows->keys + at;
        for (i64 j = 0; j < n; j++) {
            float dot = 0.0f;
            for (i64 k = 0; k < head_dim; k++) dot += q[k] * as_float(keys[j * head_dim + k]);
            scores[(p - first) + j] = scale * dot;
        }
    }
    for (i64 i = 0; i < R; i++) {  /* each row's softmax over its own positions; zero weight past them */
        float *s = scores + i * score_stride;
        const i64 length = last + i - first + 1;
        if (bias)
            for (i64 j = 0; j < length; j++) s[j] += bias[length - 1 - j];
        const float total = exp_sum<true>(s, length, max_of(s, length), s);
        for (i64 j = length; j < end - first + 1; j++) s[j] = 0.0f;
        inverse[i] = 1.0f / total;
    }
    if (wide) {
        const i64 ss = score_stride, os = out_stride;
        switch (R) {
            case 1: return weighted_rows<T, 1>(rows, l, r, g, first, end, head_dim, scores, ss, inverse, out, os);
            case 2: return weighted_rows<T, 2>(rows, l, r, g, first, end, head_dim, scores, ss, inverse, out, os);
            case 3: return weighted_rows<T, 3>(rows, l, r, g, first, end, head_dim, scores, ss, inverse, out, os);
            default: return weighted_rows<T, 4>(rows, l, r, g, first, end, head_dim, scores, ss, inverse, out, os);
        }
    }
    for (i64 k = 0; k < head_dim; k++) out[k] = 0.0f;
    for (i64 p = first, n, at; p <= last; p += n) {
        n = kv_span(rows, l, r, g, p, last, head_dim, &at);
        values = (const T *)rows->values + at;
        for (i64 j = 0; j < n; j++)
            for (i64 k = 0; k < head_dim; k++) out[k] += scores[p - first + j] * as_float(values[j * head_dim + k]);
    }
    for (i64 k = 0; k < head_dim; k++) out[k] *= inverse[0];
}

/* attend_in over the cache's values as they are held: float32, or bfloat16 widened as they are read */
static void attend(const float *q, i64 q_stride, i64 R, const qrows *rows, i64 l, i64 r, i64 g, i64 first, i64 last,
                   i64 head_dim, float scale, const float *bias, float *scores, i64 score_stride, float *out,
                   i64 out_stride) {
    if (rows->bf16)
        return attend_in<bf16_t>(q, q_stride, R, rows, l, r, g, first, last, head_dim, scale, bias, scores,
                                 score_stride, out, out_stride);
    attend_in<float>(q, q_stride, R, rows, l, r, g, first, last, head_dim, scale, bias, scores, score_stride, out,
                     out_stride);
}

/* whether rows a and b = a + 1 are consecutive positions of one sequence (one tile may hold both) */
static inline bool same_sequence(const qrows *rows, i64 a, i64 b) {
    if (rows->first[a] != rows->first[b] || rows->write_at[b] != rows->write_at[a] + 1) return false;
    if (!rows->table) return rows->row_stride == 0;
    return rows->table_stride == 0 ||
           !memcmp(rows->table + a * rows->table_stride, rows->table + b * rows->table_stride,
                   sizeof(i64) * rows->table_width);
}

#endif
