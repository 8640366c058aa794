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

/* the k best log-probabilities of row z (V logits, k <= V) into values (k), their tokens into tokens (k): the max,
   the sum and the comparisons with the k-th best 16 logits at a time (simd.h), the insertions one by one */
static void top_log_probs_row(const float *z, i64 V, int k, float *values, i64 *tokens) {
    const float m = max_of(z, V);
    /* a NaN, every logit -inf, or one +inf: no finite best; NaN values, as log_softmax gives */
    const bool nan = any_nan(z, V) || !(m > -INFINITY && m < INFINITY);
    const float lse = nan ? 0.0f : m + logf(exp_sum<false>(z, V, m, nullptr));
    int n = 0;
    i64 j = 0;
    for (; j < V && n < k; j++) keep_best(values, tokens, &n, k, z[j], j);
    for (; j < V && j % SEARCH_CHUNK; j++) keep_best(values, tokens, &n, k, z[j], j);
    const i64 whole = V / SEARCH_CHUNK * SEARCH_CHUNK;
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
