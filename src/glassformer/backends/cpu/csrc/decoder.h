/* One decoding step of a decoder for a few sequences, every layer in one call: the op glassformer::decode_step
   (ops.cpp; glassformer.backends.cpu.decoder states its arguments and holds its reference in torch operations;
   glassformer.generation.fused_step says when decoding uses it). Llama's layout and GPT-2's:

       for each layer:   h = Norm_1(x)                               RMSNorm (Llama) or LayerNorm (GPT-2, with β)
                         [q; k; v] = h [W_Q; W_K; W_V]^T (+ b)      quantized (quantized.h); biases where given
                         q, k = RMS(q_h), RMS(k_g)                  per head, with qk_norm: x / sqrt(mean(x²) + ε)
                         q, k = RoPE(q, p), RoPE(k, p)              rotary positions only (GPT-2's are learned:
                                                                    added to the embeddings by the caller)
                         cache[p] = k, v
                         o_h = softmax(s · q_h K_g^T + B_h) V_g     head h reads key/value head g = h / (H / KV);
                                                                    B_h[p − j]: a bias by distance (T5's), or 0
                         x = x + o W_O^T (+ b)
                         with a memory (an encoder-decoder's decoder: cross-attention over its source's keys and values)
                           h = Norm_c(x);  q = h W_Qc^T (+ b)          q = RMS(q_h) with qk_norm (M_K came normed)
                           o_h = softmax(s · q_h M_K,g^T) M_V,g     the source's real positions only
                           x = x + o W_Oc^T (+ b)
                         h = Norm_2(x)
                         x = x + (act(h W_gate^T) ⊙ h W_up^T) W_2^T          gated (SwiGLU: act = SiLU), or
                         x = x + act(h W_1^T + b_1) W_2^T + b_2              GPT-2's (act = GELU, tanh form), the
                                                                             paper's (ReLU)
       x = Norm_final(x)                                             where the stack has a final norm

   That is pre-norm. Post-norm (the paper's own placement, post_norm) feeds each sublayer x itself and norms after the
   residual: x = Norm_1(x + SelfAttention(x)), x = Norm_c(x + CrossAttention(x)), x = Norm_2(x + FeedForward(x)).

   Each row of the batch is a sequence of its own (qrows says where it reads and writes in the cache). The threads
   share one parallel region for the whole step: each matrix's output rows are split among them, the (tile, head)
   pairs of the attention too (a tile: up to TILE_ROWS consecutive positions of one sequence, which read each key and
   value once), the norms, rotations and quantized inputs by row, and the activation in chunks. The
   products take the activations in the form products.h says (16-bit fixed point, or bfloat16 when asked). */
#ifndef GLASSFORMER_DECODER_H
#define GLASSFORMER_DECODER_H
#include <vector>

#include "attention.h"
#include "products.h"

typedef struct {
    const float *norm1, *norm2;             /* γ of the two norms, (d_model) */
    const float *norm1_bias, *norm2_bias;   /* β of LayerNorms, else null */
    qmatrix qkv, out, fc1, fc2;             /* [W_Q; W_K; W_V], W_O, W_1 ([W_gate; W_up] when gated), W_2 */
    const float *qkv_bias, *out_bias, *fc1_bias, *fc2_bias; /* or null */
    const float *norm_cross, *norm_cross_bias; /* with a memory: γ (and β) of the cross-attention's norm */
    qmatrix cross_q, cross_out;                /* W_Qc (the cross-attention's query rows) and W_Oc */
    const float *cross_q_bias, *cross_out_bias;
} qlayer;

enum { SILU = 0, GELU_TANH = 1, GELU = 2, RELU = 3, RELU2 = 4 };

/* An encoder-decoder's memory: each layer's cross-attention keys and values of the encoded sources (`at`: contiguous
   rows, one a source, block = the longest source); source s has real positions 0 .. lengths[s] − 1 and serves the
   `copies` consecutive rows s · copies … (beam search's beams) */
typedef struct {
    qrows at;
    const i64 *lengths;
    i64 copies, longest;
} qmemory;

typedef struct {
    i64 num_layers, d_model, num_heads, kv_heads, head_dim, d_ff;
    float eps, scale;    /* the norms' ε; s, the factor of q·k */
    int layer_norm, gated, activation, rotary, post_norm, qk_norm; /* the layout (ops.cpp's decode_step states it) */
    const qlayer *layers;
    const float *final_norm, *final_norm_bias; /* γ (and β) of the final norm; null γ: none */
    const float *inv_freq; /* θ_i, (head_dim / 2), with rotary positions */
    const float *position_bias; /* B (num_heads, bias_width): the self-attention's bias by distance, or null */
    i64 bias_width;
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

/* qk_norm's RMS(v) = v / sqrt(mean(v²) + ε) for `heads` vectors of head_dim in place (no γ) */
static void rms_heads(const qdecoder *model, float *x, i64 heads) {
    const i64 hd = model->head_dim;
    for (i64 h = 0; h < heads; h++) {
        float *v = x + h * hd;
        const float r = 1.0f / sqrtf(dot_f32(v, v, hd) / (float)hd + model->eps);
        for (i64 i = 0; i < hd; i++) v[i] *= r;
    }
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

/* the feed-forward's activation: SiLU(a) = a / (1 + e^-a); GELU's tanh form ½ a (1 + tanh(√(2/π) (a + 0.044715 a³)))
   with tanh(z) = 1 − 2 / (e^2z + 1); GELU = ½ a (1 + erf(a / √2)); ReLU = max(0, a); ReLU² = max(0, a)² */
static inline float activate(int activation, float a) {
    if (activation == SILU) return a / (1.0f + exp_approx(-a));
    if (activation == RELU) return a > 0.0f ? a : 0.0f;
    if (activation == RELU2) return a > 0.0f ? a * a : 0.0f;
    if (activation == GELU_TANH) {
        const float z = 0.7978845608028654f * (a + 0.044715f * a * a * a);
        return 0.5f * a * (2.0f - 2.0f / (exp_approx(2.0f * z) + 1.0f));
    }
    return 0.5f * a * (1.0f + erff(a * 0.7071067811865476f));
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
    else if (f == RELU && !model->gated)
        for (i64 k = k0; k < k1; k++) out[k] = a[k] > 0.0f ? a[k] : 0.0f;
    else if (model->gated)
        for (i64 k = k0; k < k1; k++) out[k] = activate(f, a[k]) * b[k];
    else
        for (i64 k = k0; k < k1; k++) out[k] = activate(f, a[k]);
}

/* Inside the step's parallel region, thread t of T: out (B, N) = in W^T + b, or out += it (add) — each row of `in`
   (width K) normed first into h where γ is given, then its activations prepared (a row per thread), then this
   thread's share of W's N rows; all threads wait at the end. */
static inline void layer_product(const qdecoder *model, const float *in, const float *gamma, const float *beta,
                                 float *h, const qmatrix *w, xrows &space, i64 B, const float *bias, float *out,
                                 int add, i64 t, i64 T) {
    const i64 K = w->K;
#pragma omp for schedule(static)
    for (i64 r = 0; r < B; r++) {
        const float *row = in + r * K;
        if (gamma) {
            norm(model, row, gamma, beta, h + r * K);
            row = h + r * K;
        }
        prepare_row(row, r, K, w->G, space);
    }
    products(w, space, B, w->N * t / T, w->N * (t + 1) / T, bias, out, w->N, add);
#pragma omp barrier
}

/* Inside the step's parallel region, after a sublayer's residual add: post-norm's x = Norm(x) for each row (γ, β
   that sublayer's norm); nothing for pre-norm, whose norm came before the sublayer */
static inline void after_residual(const qdecoder *model, float *x, i64 B, const float *gamma, const float *beta) {
    if (!model->post_norm) return;
    const i64 d = model->d_model;
#pragma omp for schedule(static)
    for (i64 r = 0; r < B; r++) norm(model, x + r * d, gamma, beta, x + r * d);
}

/* x (B, d_model): in, the new tokens' embeddings; out, the final norm of their hidden states. The new positions are
   written into the cache; memory: the sources of an encoder-decoder (its layers have cross-attention), else null;
   bf16: the products take the activations in bfloat16 (products.h). Returns 0, or 1 where memory could not be had or
   a row lies outside the cache. */
static int decode_step(const qdecoder *model, float *x, i64 B, const qrows *rows, const qmemory *memory, int threads,
                       bool bf16) {
    const i64 d = model->d_model, H = model->num_heads, KV = model->kv_heads, hd = model->head_dim;
    const i64 ff = model->d_ff, S = rows->table ? rows->table_width * rows->block : rows->block;
    const i64 width = (H + 2 * KV) * hd;
    i64 wide = d > ff ? d : ff, span = 1; /* the widest input of a product; the most positions a row attends to */
    wide = wide > H * hd ? wide : H * hd;
    for (i64 r = 0; r < B; r++) {
        const i64 n = rows->write_at[r] - rows->first[r] + 1;
        span = n > span ? n : span;
    }
    span = memory && memory->longest > span ? memory->longest : span;
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
        failed |= model->position_bias && rows->write_at[r] - rows->first[r] >= model->bias_width;
    }
    const i64 chunks = (ff + 255) / 256; /* the activation shared out among threads in chunks of 256 */
    std::vector<i64> tile; /* the first row of each tile of rows that attend together, then B */
    for (i64 r = 0; r < B; r++)
        if (r == 0 || hd % 16 || !same_sequence(rows, r - 1, r) || r - tile.back() == TILE_ROWS) tile.push_back(r);
    const i64 tiles = (i64)tile.size();
    tile.push_back(B);
#pragma omp parallel num_threads(threads) if (!failed)
    {
        i64 t, T;
        thread_index(&t, &T);
        /* each matrix: its input's rows quantized (a row per thread), then its output rows shared out */
        for (i64 l = 0; l < model->num_layers && !failed; l++) {
            const qlayer *layer = model->layers + l;
            const bool pre = !model->post_norm; /* pre-norm: each sublayer's input normed; post-norm: x itself */
            layer_product(model, x, pre ? layer->norm1 : nullptr, layer->norm1_bias, h, &layer->qkv, space, B,
                          layer->qkv_bias, qkv, 0, t, T);
#pragma omp for schedule(static)
            for (i64 r = 0; r < B; r++) {
                float *row = qkv + r * width;
                if (model->qk_norm) rms_heads(model, row, H + KV);  /* q, k */
                if (model->rotary) rope(row, H + KV, hd, rotation + r * 2 * hd, rotation + r * 2 * hd + hd);  /* q, k */
                const i64 at = rows->write_at[r];
                for (i64 g = 0; g < KV; g++) {
                    i64 where;
                    kv_span(rows, l, r, g, at, at, hd, &where);
                    store_kv(rows, rows->keys, where, row + (H + g) * hd, hd);
                    store_kv(rows, rows->values, where, row + (H + KV + g) * hd, hd);
                }
            }
#pragma omp for schedule(static)
            for (i64 task = 0; task < tiles * H; task++) {  /* (tile, head) pairs */
                const i64 r = tile[task / H], R = tile[task / H + 1] - r, head = task % H, g = head / (H / KV);
                const float *bias = model->position_bias ? model->position_bias + head * model->bias_width : nullptr;
                attend(qkv + r * width + head * hd, width, R, rows, l, r, g, rows->first[r], rows->write_at[r], hd,
                       model->scale, bias, scores + (r * H + head) * span, H * span, o + (r * H + head) * hd, H * hd);
            }
            layer_product(model, o, nullptr, nullptr, h, &layer->out, space, B, layer->out_bias, x, 1, t, T);
            after_residual(model, x, B, layer->norm1, layer->norm1_bias);
            if (memory) { /* cross-attention: each row's query over its source's keys and values */
                layer_product(model, x, pre ? layer->norm_cross : nullptr, layer->norm_cross_bias, h, &layer->cross_q,
                              space, B, layer->cross_q_bias, qkv, 0, t, T);
#pragma omp for schedule(static)
                for (i64 task = 0; task < B * H; task++) {  /* (row, head) pairs */
                    const i64 r = task / H, head = task % H, source = r / memory->copies;
                    if (model->qk_norm) rms_heads(model, qkv + r * H * hd + head * hd, 1);
                    attend(qkv + r * H * hd + head * hd, H * hd, 1, &memory->at, l, source, head / (H / KV), 0,
                           memory->lengths[source] - 1, hd, model->scale, nullptr, scores + task * span, span,
                           o + task * hd, H * hd);
                }
                layer_product(model, o, nullptr, nullptr, h, &layer->cross_out, space, B, layer->cross_out_bias, x, 1,
                              t, T);
                after_residual(model, x, B, layer->norm_cross, layer->norm_cross_bias);
            }
            layer_product(model, x, pre ? layer->norm2 : nullptr, layer->norm2_bias, h, &layer->fc1, space, B,
                          layer->fc1_bias, gate_up, 0, t, T);
#pragma omp for schedule(static)
            for (i64 c = 0; c < B * chunks; c++) {  /* act(a) ⊙ b (gated), or act(a) */
                const i64 r = c / chunks, k0 = (c % chunks) * 256, k1 = k0 + 256 < ff ? k0 + 256 : ff;
                activated(model, gate_up + r * width1, k0, k1, act + r * ff);
            }
            layer_product(model, act, nullptr, nullptr, h, &layer->fc2, space, B, layer->fc2_bias, x, 1, t, T);
            after_residual(model, x, B, layer->norm2, layer->norm2_bias);
        }
#pragma omp single
        if (!failed && model->final_norm)
            for (i64 r = 0; r < B; r++) norm(model, x + r * d, model->final_norm, model->final_norm_bias, x + r * d);
    }
    free(h), free(qkv), free(o), free(gate_up), free(act), free(scores), free(rotation);
    return failed;
}

#endif
