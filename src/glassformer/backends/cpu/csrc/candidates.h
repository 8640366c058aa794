/* Beam search's candidates of a step, each row of logits z (V tokens) read from memory once: the k largest

       log softmax(z)_i = z_i − lse(z),   lse(z) = m + log Σ_j e^(z_j − m),   m = max_j z_j

   best first, and their tokens. log-softmax keeps a row's order, so its k best are the k largest logits, less one
   number; the full (rows, V) log-probabilities are never written. A row holding a NaN, or whose best is ±inf, gets
   NaN values (beam search refuses them), as log_softmax gives. Equal logits: the lower token first. */
#ifndef GLASSFORMER_CANDIDATES_H
#define GLASSFORMER_CANDIDATES_H
#include "simd.h"

#define SEARCH_CHUNK 16 /* logits taken lane by lane at once; a chunk below the k-th best so far is passed over */

/* insert (v, token) into the n kept (descending values; at most k kept), if it is among the k largest */
static inline void keep_best(float *values, i64 *tokens, int *n, int k, float v, i64 token) {
    if (*n == k && !(v > values[k - 1])) return;
    int i = *n < k ? (*n)++ : k - 1;
    for (; i > 0 && v > values[i - 1]; i--) values[i] = values[i - 1], tokens[i] = tokens[i - 1];
    values[i] = v, tokens[i] = token;
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

/* the k best log-probabilities of row z (V logits, k <= V) into values (k), their tokens into tokens (k): the max,
   the sum and the comparisons with the k-th best 16 logits at a time, the insertions one by one */
static void top_log_probs_row(const float *z, i64 V, int k, float *values, i64 *tokens) {
    const i64 whole = V / SEARCH_CHUNK * SEARCH_CHUNK;
    f32x16 lanes_max = {}, lanes_sum = {};
    i32x16 lanes_nan = {};
    lanes_max -= INFINITY;
    for (i64 j = 0; j < whole; j += SEARCH_CHUNK) {
        const f32x16 v = load16(z + j);
        lanes_max = max16(v, lanes_max), lanes_nan |= v != v;
    }
    float m = -INFINITY;
    bool nan = any16(lanes_nan);
    for (int c = 0; c < SEARCH_CHUNK; c++) m = lanes_max[c] > m ? lanes_max[c] : m;
    for (i64 j = whole; j < V; j++) m = z[j] > m ? z[j] : m, nan |= z[j] != z[j];
    float lse = m;
    if (!(m > -INFINITY && m < INFINITY))
        nan = true; /* every logit -inf, or one +inf: no finite best; NaN values, as log_softmax gives */
    else {
        for (i64 j = 0; j < whole; j += SEARCH_CHUNK) {
            const f32x16 v = load16(z + j) - m;
            for (int c = 0; c < SEARCH_CHUNK; c++) lanes_sum[c] += exp_approx(v[c]);
        }
        float total = 0.0f;
        for (int c = 0; c < SEARCH_CHUNK; c++) total += lanes_sum[c];
        for (i64 j = whole; j < V; j++) total += exp_approx(z[j] - m);
        lse = m + logf(total);
    }
    int n = 0;
    i64 j = 0;
    for (; j < V && n < k; j++) keep_best(values, tokens, &n, k, z[j], j);
    for (; j < V && j % SEARCH_CHUNK; j++) keep_best(values, tokens, &n, k, z[j], j);
    for (; j < whole; j += SEARCH_CHUNK)
        if (any16(load16(z + j) > values[k - 1]))
            for (int c = 0; c < SEARCH_CHUNK; c++) keep_best(values, tokens, &n, k, z[j + c], j + c);
    for (; j < V; j++) keep_best(values, tokens, &n, k, z[j], j);
    for (int i = 0; i < k; i++) values[i] = nan ? NAN : values[i] - lse;
}

/* every row of z (rows, V), split over the threads */
static void top_log_probs(const float *z, i64 rows, i64 V, int k, float *values, i64 *tokens, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (i64 r = 0; r < rows; r++) top_log_probs_row(z + r * V, V, k, values + r * k, tokens + r * k);
}

#endif
