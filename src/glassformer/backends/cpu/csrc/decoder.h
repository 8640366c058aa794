/* One decoding step of a decoder for a few sequences, every layer in one call: the op glassformer::decode_step
   (ops.cpp; glassformer.backends.cpu.decoder states its arguments and holds its reference in torch operations;
   glassformer.generation.fused_step says when decoding uses it). Llama's layout and GPT-2's:

       for each layer:   h = Norm_1(x)                               RMSNorm (Llama) or LayerNorm (GPT-2, with β)
                         [q; k; v] = h [W_Q; W_K; W_V]^T (+ b)      quantized (quantized.h); biases where given
                         q, k = RoPE(q, p), RoPE(k, p)              rotary positions only (GPT-2's are learned:
                                                                    added to the embeddings by the caller)
                         cache[p] = k, v
                         o_h = softmax(s · q_h K_g^T) V_g           head h reads key/value head g = h / (H / KV)
                         x = x + o W_O^T (+ b)
                         h = Norm_2(x)
                         x = x + (act(h W_gate^T) ⊙ h W_up^T) W_2^T          gated (SwiGLU: act = SiLU), or
                         x = x + act(h W_1^T + b_1) W_2^T + b_2              GPT-2's (act = GELU, tanh form)
       x = Norm_final(x)

   Each row of the batch is a sequence of its own (qrows says where it reads and writes in the cache). The threads
   share one parallel region for the whole step: each matrix's output rows are split among them, the (row, head)
   pairs of the attention too, the norms, rotations and quantized inputs by row, and the activation in chunks. The
   products take the activations in the form products.h says (16-bit fixed point, or bfloat16 when asked). */
#ifndef GLASSFORMER_DECODER_H
#define GLASSFORMER_DECODER_H
#include <vector>

#include "products.h"

typedef struct {
    const float *norm1, *norm2;             /* γ of the two norms, (d_model) */
    const float *norm1_bias, *norm2_bias;   /* β of LayerNorms, else null */
    qmatrix qkv, out, fc1, fc2;             /* [W_Q; W_K; W_V], W_O, W_1 ([W_gate; W_up] when gated), W_2 */
    const float *qkv_bias, *out_bias, *fc1_bias, *fc2_bias; /* or null */
} qlayer;

enum { SILU = 0, GELU_TANH = 1, GELU = 2 };

typedef struct {
    i64 num_layers, d_model, num_heads, kv_heads, head_dim, d_ff;
    float eps, scale;    /* the norms' ε; s, the factor of q·k */
    int layer_norm, gated, activation, rotary; /* the layout (ops.cpp's decode_step states it) */
    const qlayer *layers;
    const float *final_norm, *final_norm_bias; /* γ (and β) of the final norm */
    const float *inv_freq; /* θ_i, (head_dim / 2), with rotary positions */
} qdecoder;

/* RMSNorm(x) = γ ⊙ x / sqrt(mean(x²) + ε), or LayerNorm(x) = γ ⊙ (x − mean) / sqrt(mean((x − mean)²) + ε) + β */
static void norm(const qdecoder *model, const float *x, const float *weight, const float *bias, float *out) {
    const i64 n = model->d_model;
    float mean = 0.0f, sum = 0.0f;
    if (model->layer_norm) {
        for (i64 i = 0; i < n; i++) mean += x[i];
        mean /= (float)n;
        for (i64 i = 0; i < n; i++) sum += (x[i] - mean) * (x[i] - mean);
    } else {
        sum = dot_f32(x, x, n);
    }
    const float r = 1.0f / sqrtf(sum / (float)n + model->eps);
    for (i64 i = 0; i < n; i++) out[i] = weight[i] * ((x[i] - mean) * r) + (bias ? bias[i] : 0.0f);
}

/* rotate `heads` vectors of head_dim in place:
   (x_i, x_{i+d/2}) -> (x_i cos − x_{i+d/2} sin, x_{i+d/2} cos + x_i sin) */
static void rope(float *x, i64 heads, i64 head_dim, const float *cos_, const float *sin_) {
    const i64 half = head_dim / 2;
    for (i64 h = 0; h < heads; h++) {
        float *v = x + h * head_dim;
        for (i64 i = 0; i < half; i++) {
            const float a = v[i], b = v[i + half];
            v[i] = a * cos_[i] - b * sin_[i];
            v[i + half] = b * cos_[i] + a * sin_[i];
        }
    }
}

/* e^x in float32, within a few ulp of expf for x in [-87, 88] (clamped there: e^-87 ~ 1.6e-38 stands for 0): x = n ln 2
   + r, |r| <= ln 2 / 2 (Cody-Waite, Cephes' constants), e^r = 1 + r + r^2 P(r) (Cephes' degree-5 P), 2^n made in
   the exponent bits. No calls and no branches, so that loops over it vectorize. */
static inline __attribute__((always_inline)) float exp_approx(float x) {
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    const float n = rintf(x * 1.44269504088896341f);
    const float r = fmaf(n, 2.12194440e-4f, fmaf(n, -0.693359375f, x));
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f), p = fmaf(p, r, 8.3334519073e-3f), p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f), p = fmaf(p, r, 5.0000001201e-1f);
    const int32_t bits = ((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return fmaf(p, r * r, r + 1.0f) * two_n;
}

/* the feed-forward's activation: SiLU(a) = a / (1 + e^-a); GELU's tanh form ½ a (1 + tanh(√(2/π) (a + 0.044715 a³)))
   with tanh(z) = 1 − 2 / (e^2z + 1); GELU = ½ a (1 + erf(a / √2)) */
static inline float activate(int activation, float a) {
    if (activation == SILU) return a / (1.0f + exp_approx(-a));
    if (activation == GELU_TANH) {
        const float z = 0.7978845608028654f * (a + 0.044715f * a * a * a);
        return 0.5f * a * (2.0f - 2.0f / (exp_approx(2.0f * z) + 1.0f));
    }
    return 0.5f * a * (1.0f + erff(a * 0.7071067811865476f));
}

/* 16 floats as one value (GCC's and clang's vector extension): one AVX512 register, two AVX2 ones, four NEON ones */
typedef float f32x16 __attribute__((vector_size(64)));

static inline f32x16 load16(const float *p) {
    f32x16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

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

/* out[k] = act(a[k]) ⊙ b[k] (gated: a and b the two halves of W_1's outputs, d_ff each), or act(a[k]), for
   k0 <= k < k1; each activation in a loop of its own (one that vectorizes) */
static inline void activated(const qdecoder *model, const float *a, i64 k0, i64 k1, float *out) {
    const float *b = a + model->d_ff;
    const int f = model->activation;
    if (f == SILU && model->gated)
        for (i64 k = k0; k < k1; k++) out[k] = a[k] / (1.0f + exp_approx(-a[k])) * b[k];
    else if (f == SILU)
        for (i64 k = k0; k < k1; k++) out[k] = a[k] / (1.0f + exp_approx(-a[k]));
    else if (model->gated)
        for (i64 k = k0; k < k1; k++) out[k] = activate(f, a[k]) * b[k];
    else
        for (i64 k = k0; k < k1; k++) out[k] = activate(f, a[k]);
}

/* Where each of the B rows reads and writes in the cache: rows are sequences of their own lengths (a batch with left
   padding, or a server's slots). Row r writes its new key and value at position write_at[r], attends to positions
   first[r] .. write_at[r], and is rotated by the angle of position rotary_at[r] (its count of real tokens before).
   A row's positions lie in blocks of `block` positions, (kv_heads, block, head_dim) each: without a table, one
   block per row (block = max_length, row r's at row r · row_stride); with a table (a paged cache: a server's
   slots), position p of row r in block table[r · table_stride + p / block], at blocks · block_stride. */
typedef struct {
    const i64 *write_at, *first, *rotary_at;
    float *keys, *values;  /* layer 0 of the cache */
    i64 row_stride, layer_stride, block;
    const i64 *table;      /* null: contiguous rows */
    i64 table_stride, block_stride, table_width;
} qrows;

/* The positions of row r's block that holds position p, from p to the block's end or `last`, whichever is first;
   *at: where position p's head g starts in `base` (the cache's keys or values) in layer l. */
static inline i64 kv_span(const qrows *rows, float *base, i64 l, i64 r, i64 g, i64 p, i64 last, i64 hd,
                          float **at) {
    const i64 b = rows->block, in_block = p % b;
    const i64 where = rows->table ? rows->table[r * rows->table_stride + p / b] * rows->block_stride
                                  : r * rows->row_stride;  /* one block a row: p / b = 0 */
    *at = base + l * rows->layer_stride + where + (g * b + in_block) * hd;
    const i64 end = p - in_block + b - 1;
    return (end < last ? end : last) - p + 1;
}

/* columns c0 .. c0 + 16 C of out = inverse · Σ_p w[p] V[p] over positions first..last of row r's value head g in
   layer l, w = scores: C columns of 16 summed in registers, positions two at a time into two sets of sums (so that
   no addition waits for the one before it) */
template <int C>
static inline void weighted_values(const qrows *rows, i64 l, i64 r, i64 g, i64 first, i64 last, i64 head_dim, i64 c0,
                                   const float *scores, float inverse, float *out) {
    f32x16 a[C] = {}, b[C] = {};
    float *values;
    for (i64 p = first, n; p <= last; p += n) {
        n = kv_span(rows, rows->values, l, r, g, p, last, head_dim, &values);
        const float *w = scores + (p - first), *v = values + c0;
        i64 j = 0;
        for (; j + 1 < n; j += 2)
            for (int c = 0; c < C; c++) {
                a[c] += w[j] * load16(v + j * head_dim + 16 * c);
                b[c] += w[j + 1] * load16(v + (j + 1) * head_dim + 16 * c);
            }
        for (; j < n; j++)
            for (int c = 0; c < C; c++) a[c] += w[j] * load16(v + j * head_dim + 16 * c);
    }
    for (int c = 0; c < C; c++) {
        const f32x16 sum = (a[c] + b[c]) * inverse;
        memcpy(out + c0 + 16 * c, &sum, sizeof sum);
    }
}

/* out (head_dim) = softmax(s · q K^T) V over positions first..last of row r's key/value head g in layer l; scores:
   last - first + 1 floats. The positions are walked block by block (contiguous within a block). head_dim a
   multiple of 16: each q·k in vectors of 16, and V read in columns of 16 per pass over the positions with each
   column's sums in registers; otherwise the plain loops. */
static void attend(const float *q, const qrows *rows, i64 l, i64 r, i64 g, i64 first, i64 last, i64 head_dim,
                   float scale, float *scores, float *out) {
    const bool wide = head_dim % 16 == 0;
    const i64 length = last - first + 1;
    float top = -INFINITY, total = 0.0f;
    float *keys, *values;
    for (i64 p = first, n; p <= last; p += n) {
        n = kv_span(rows, rows->keys, l, r, g, p, last, head_dim, &keys);
        float *s = scores + (p - first);
        i64 j = 0;
        for (; wide && j < n; j += 16) {  /* 16 keys at a time (missing ones zero), their sums halved together */
            f32x16 sum[16] = {};
            const i64 m = n - j < 16 ? n - j : 16;
            for (i64 i = 0; i < head_dim; i += 16) {
                const f32x16 qi = load16(q + i);
                for (i64 jj = 0; jj < m; jj++) sum[jj] += qi * load16(keys + (j + jj) * head_dim + i);
            }
            float dots[16];
            const f32x16 scaled = sums16(sum) * scale;
            memcpy(dots, &scaled, sizeof dots);
            for (i64 jj = 0; jj < m; jj++) s[j + jj] = dots[jj];
        }
        for (; j < n; j++) {
            float dot = 0.0f;
            for (i64 i = 0; i < head_dim; i++) dot += q[i] * keys[j * head_dim + i];
            s[j] = scale * dot;
        }
        for (j = 0; j < n; j++) top = s[j] > top ? s[j] : top;
    }
    for (i64 j = 0; j < length; j++) scores[j] = exp_approx(scores[j] - top);
    for (i64 j = 0; j < length; j++) total += scores[j];
    const float inverse = 1.0f / total;
    if (wide) {
        i64 c0 = 0;
        for (; c0 + 64 <= head_dim; c0 += 64) weighted_values<4>(rows, l, r, g, first, last, head_dim, c0, scores,
                                                                inverse, out);
        for (; c0 < head_dim; c0 += 16) weighted_values<1>(rows, l, r, g, first, last, head_dim, c0, scores, inverse,
                                                          out);
        return;
    }
    for (i64 i = 0; i < head_dim; i++) out[i] = 0.0f;
    for (i64 p = first, n; p <= last; p += n) {
        n = kv_span(rows, rows->values, l, r, g, p, last, head_dim, &values);
        for (i64 j = 0; j < n; j++)
            for (i64 i = 0; i < head_dim; i++) out[i] += scores[p - first + j] * values[j * head_dim + i];
    }
    for (i64 i = 0; i < head_dim; i++) out[i] *= inverse;
}

/* x (B, d_model): in, the new tokens' embeddings; out, the final norm of their hidden states. The new positions are
   written into the cache; bf16: the products take the activations in bfloat16 (products.h). Returns 0, or 1 where
   memory could not be had. */
static int decode_step(const qdecoder *model, float *x, i64 B, const qrows *rows, int threads, bool bf16) {
    const i64 d = model->d_model, H = model->num_heads, KV = model->kv_heads, hd = model->head_dim;
    const i64 ff = model->d_ff, S = rows->table ? rows->table_width * rows->block : rows->block;
    const i64 width = (H + 2 * KV) * hd;
    i64 wide = d > ff ? d : ff, span = 1; /* the widest input of a product; the most positions a row attends to */
    wide = wide > H * hd ? wide : H * hd;
    for (i64 r = 0; r < B; r++) {
        const i64 n = rows->write_at[r] - rows->first[r] + 1;
        span = n > span ? n : span;
    }
    float *h = (float *)malloc(sizeof(float) * B * d), *qkv = (float *)malloc(sizeof(float) * B * width);
    const i64 width1 = model->gated ? 2 * ff : ff; /* W_1's outputs */
    float *o = (float *)malloc(sizeof(float) * B * H * hd), *gate_up = (float *)malloc(sizeof(float) * B * width1);
    float *act = (float *)malloc(sizeof(float) * B * ff); /* SiLU(a) ⊙ b */
    float *scores = (float *)malloc(sizeof(float) * B * H * span), *rotation = (float *)malloc(sizeof(float) * B * 2 * hd);
    xrows space(B, wide, bf16); /* the activations of each product, in the form the products take (products.h) */
    int failed = !(h && qkv && o && gate_up && act && scores && rotation);
    for (i64 r = 0; r < B && !failed; r++) {  /* each row's cos and sin, each repeated over both halves, as rope takes
                                                  them; angles in float32 as torch */
        for (i64 i = 0; i < hd && model->rotary; i++) {
            const float angle = (float)rows->rotary_at[r] * model->inv_freq[i % (hd / 2)];
            rotation[r * 2 * hd + i] = cosf(angle);
            rotation[r * 2 * hd + hd + i] = sinf(angle);
        }
        failed |= rows->write_at[r] >= S || rows->first[r] > rows->write_at[r];
    }
    const i64 chunks = (ff + 255) / 256; /* the activation shared out among threads in chunks of 256 */
#pragma omp parallel num_threads(threads) if (!failed)
    {
        i64 t, T;
        thread_index(&t, &T);
        /* each matrix: its input's rows quantized (a row per thread), then its output rows shared out */
        for (i64 l = 0; l < model->num_layers && !failed; l++) {
            const qlayer *layer = model->layers + l;
            const qmatrix *w = &layer->qkv;
#pragma omp for schedule(static)
            for (i64 r = 0; r < B; r++) {
                norm(model, x + r * d, layer->norm1, layer->norm1_bias, h + r * d);
                prepare_row(h + r * d, r, d, w->G, space);
            }
            products(w, space, B, w->N * t / T, w->N * (t + 1) / T, layer->qkv_bias, qkv, w->N, 0);
#pragma omp barrier
#pragma omp for schedule(static)
            for (i64 r = 0; r < B; r++) {
                float *row = qkv + r * width;
                if (model->rotary) rope(row, H + KV, hd, rotation + r * 2 * hd, rotation + r * 2 * hd + hd);  /* q, k */
                const i64 at = rows->write_at[r];
                for (i64 g = 0; g < KV; g++) {
                    float *k, *v;
                    kv_span(rows, rows->keys, l, r, g, at, at, hd, &k);
                    kv_span(rows, rows->values, l, r, g, at, at, hd, &v);
                    memcpy(k, row + (H + g) * hd, sizeof(float) * hd);
                    memcpy(v, row + (H + KV + g) * hd, sizeof(float) * hd);
                }
            }
#pragma omp for schedule(static)
            for (i64 task = 0; task < B * H; task++) {  /* (row, head) pairs */
                const i64 r = task / H, head = task % H, g = head / (H / KV);
                attend(qkv + r * width + head * hd, rows, l, r, g, rows->first[r], rows->write_at[r], hd, model->scale,
                       scores + task * span, o + (r * H + head) * hd);
            }
            w = &layer->out;
#pragma omp for schedule(static)
            for (i64 r = 0; r < B; r++) prepare_row(o + r * H * hd, r, H * hd, w->G, space);
            products(w, space, B, w->N * t / T, w->N * (t + 1) / T, layer->out_bias, x, w->N, 1);
#pragma omp barrier
            w = &layer->fc1;
#pragma omp for schedule(static)
            for (i64 r = 0; r < B; r++) {
                norm(model, x + r * d, layer->norm2, layer->norm2_bias, h + r * d);
                prepare_row(h + r * d, r, d, w->G, space);
            }
            products(w, space, B, w->N * t / T, w->N * (t + 1) / T, layer->fc1_bias, gate_up, w->N, 0);
#pragma omp barrier
#pragma omp for schedule(static)
            for (i64 c = 0; c < B * chunks; c++) {  /* act(a) ⊙ b (gated), or act(a) */
                const i64 r = c / chunks, k0 = (c % chunks) * 256, k1 = k0 + 256 < ff ? k0 + 256 : ff;
                activated(model, gate_up + r * width1, k0, k1, act + r * ff);
            }
            w = &layer->fc2;
#pragma omp for schedule(static)
            for (i64 r = 0; r < B; r++) prepare_row(act + r * ff, r, ff, w->G, space);
            products(w, space, B, w->N * t / T, w->N * (t + 1) / T, layer->fc2_bias, x, w->N, 1);
#pragma omp barrier
        }
#pragma omp single
        if (!failed)
            for (i64 r = 0; r < B; r++) norm(model, x + r * d, model->final_norm, model->final_norm_bias, x + r * d);
    }
    free(h), free(qkv), free(o), free(gate_up), free(act), free(scores), free(rotation);
    return failed;
}

#endif
