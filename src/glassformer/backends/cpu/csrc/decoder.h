/* One decoding step of a Llama-style decoder for a few sequences, every layer in one call: the op
   glassformer::decode_step (ops.cpp; glassformer.backends.cpu.decoder states its arguments and holds its reference in
   torch operations; glassformer.generation.fused_step says when decoding uses it):

       for each layer:   h = RMSNorm_1(x)
                         [q; k; v] = h [W_Q; W_K; W_V]^T            quantized (quantized.h)
                         q, k = RoPE(q, p), RoPE(k, p)              rotate-half pairs (i, i + d/2), angle p θ_i
                         cache[p] = k, v
                         o_h = softmax(s · q_h K_g^T) V_g           head h reads key/value head g = h / (H / KV)
                         x = x + o W_O^T
                         h = RMSNorm_2(x)
                         [a; b] = h [W_gate; W_up]^T
                         x = x + (SiLU(a) ⊙ b) W_2^T
       x = RMSNorm_final(x)                                          RMSNorm(x) = γ ⊙ x / sqrt(mean(x²) + ε)

   Each row of the batch is a sequence of its own (qrows says where it reads and writes in the cache). The threads
   share one parallel region for the whole step: each matrix's output rows are split among them, the (row, head)
   pairs of the attention too, and the small vector work between two products is done by one thread. */
#ifndef GLASSFORMER_DECODER_H
#define GLASSFORMER_DECODER_H
#include <vector>

#include "quantized.h"

typedef struct {
    const float *norm1, *norm2; /* γ of the two RMSNorms, (d_model) */
    qmatrix qkv, out, fc1, fc2; /* [W_Q; W_K; W_V], W_O, [W_gate; W_up], W_2 */
} qlayer;

typedef struct {
    i64 num_layers, d_model, num_heads, kv_heads, head_dim, d_ff;
    float eps, scale; /* RMSNorm's ε; s, the factor of q·k */
    const qlayer *layers;
    const float *final_norm; /* γ of the final RMSNorm */
    const float *inv_freq;   /* θ_i, (head_dim / 2) */
} qdecoder;

static void rms_norm(const float *x, const float *weight, i64 n, float eps, float *out) {
    float sum = dot_f32(x, x, n);
    const float r = 1.0f / sqrtf(sum / (float)n + eps);
    for (i64 i = 0; i < n; i++) out[i] = weight[i] * (x[i] * r);
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

/* out (head_dim) = softmax(s · q K^T) V over positions 0..length-1 of one key/value head; scores: length floats */
static void attend(const float *q, const float *keys, const float *values, i64 length, i64 head_dim, float scale,
                   float *scores, float *out) {
    float top = -INFINITY, total = 0.0f;
    for (i64 j = 0; j < length; j++) {
        scores[j] = scale * dot_f32(q, keys + j * head_dim, head_dim);
        top = scores[j] > top ? scores[j] : top;
    }
    for (i64 j = 0; j < length; j++) total += scores[j] = expf(scores[j] - top);
    memset(out, 0, sizeof(float) * head_dim);
    for (i64 j = 0; j < length; j++) {
        const float p = scores[j] / total;
        const float *v = values + j * head_dim;
        for (i64 i = 0; i < head_dim; i++) out[i] += p * v[i];
    }
}

/* Where each of the B rows reads and writes in the cache: rows are sequences of their own lengths (a batch with left
   padding, or a server's slots). Row r writes its new key and value at position write_at[r], attends to positions
   first[r] .. write_at[r], and is rotated by the angle of position rotary_at[r] (its count of real tokens before). */
typedef struct {
    const i64 *write_at, *first, *rotary_at;
    float *keys, *values;  /* row 0, layer 0 of the cache: (kv_heads, max_length, head_dim) per row and layer */
    i64 row_stride, layer_stride, max_length;
} qrows;

/* x (B, d_model): in, the new tokens' embeddings; out, the final norm of their hidden states. The new positions are
   written into the cache. Returns 0, or 1 where memory could not be had. */
static int decode_step(const qdecoder *model, float *x, i64 B, const qrows *rows, int threads) {
    const i64 d = model->d_model, H = model->num_heads, KV = model->kv_heads, hd = model->head_dim;
    const i64 ff = model->d_ff, S = rows->max_length, width = (H + 2 * KV) * hd;
    i64 wide = d > ff ? d : ff, span = 1; /* the widest input of a product; the most positions a row attends to */
    wide = wide > H * hd ? wide : H * hd;
    for (i64 r = 0; r < B; r++) {
        const i64 n = rows->write_at[r] - rows->first[r] + 1;
        span = n > span ? n : span;
    }
    float *h = (float *)malloc(sizeof(float) * B * d), *qkv = (float *)malloc(sizeof(float) * B * width);
    float *o = (float *)malloc(sizeof(float) * B * H * hd), *gate_up = (float *)malloc(sizeof(float) * B * 2 * ff);
    float *scores = (float *)malloc(sizeof(float) * B * H * span), *angles = (float *)malloc(sizeof(float) * B * hd);
    int16_t *xq = (int16_t *)malloc(sizeof(int16_t) * B * wide);
    float *xd = (float *)malloc(sizeof(float) * B * wide / BLOCK), *xsum = (float *)malloc(sizeof(float) * wide / BLOCK);
    float *gsum = (float *)malloc(sizeof(float) * B * wide / BLOCK);
    int failed = !(h && qkv && o && gate_up && scores && angles && xq && xd && xsum && gsum);
    for (i64 r = 0; r < B && !failed; r++) {  /* the rows' cos and sin over both halves, angles in float32 as torch */
        for (i64 i = 0; i < hd / 2; i++) {
            const float angle = (float)rows->rotary_at[r] * model->inv_freq[i];
            angles[r * hd + i] = cosf(angle);
            angles[r * hd + hd / 2 + i] = sinf(angle);
        }
        failed |= rows->write_at[r] >= S || rows->first[r] > rows->write_at[r];
    }
    qx q = {xq, xd, gsum, d};
#pragma omp parallel num_threads(threads) if (!failed)
    {
        i64 t = 0, T = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        T = omp_get_num_threads();
#endif
        for (i64 l = 0; l < model->num_layers && !failed; l++) {
            const qlayer *layer = model->layers + l;
            const qmatrix *w;
#pragma omp single
            {
                for (i64 r = 0; r < B; r++) rms_norm(x + r * d, layer->norm1, d, model->eps, h + r * d);
                q = quantize_rows(h, B, d, layer->qkv.G, xq, xd, xsum, gsum);
            }
            w = &layer->qkv;
            qmatrix_rows(w, q, B, w->N * t / T, w->N * (t + 1) / T, nullptr, qkv, w->N, 0);
#pragma omp barrier
#pragma omp single
            for (i64 r = 0; r < B; r++) {
                float *row = qkv + r * width, *cos_sin = angles + r * hd;
                std::vector<float> cos_(hd), sin_(hd);  /* cos and sin repeated over both halves, as rope takes them */
                for (i64 i = 0; i < hd; i++) {
                    cos_[i] = cos_sin[i % (hd / 2)];
                    sin_[i] = cos_sin[hd / 2 + i % (hd / 2)];
                }
                rope(row, H + KV, hd, cos_.data(), sin_.data());  /* queries and keys: the first H + KV heads */
                const i64 at = rows->write_at[r], base = l * rows->layer_stride + r * rows->row_stride;
                for (i64 g = 0; g < KV; g++) {
                    memcpy(rows->keys + base + (g * S + at) * hd, row + (H + g) * hd, sizeof(float) * hd);
                    memcpy(rows->values + base + (g * S + at) * hd, row + (H + KV + g) * hd, sizeof(float) * hd);
                }
            }
#pragma omp for schedule(static)
            for (i64 task = 0; task < B * H; task++) {  /* (row, head) pairs */
                const i64 r = task / H, head = task % H, g = head / (H / KV), first = rows->first[r];
                const i64 base = l * rows->layer_stride + r * rows->row_stride + (g * S + first) * hd;
                attend(qkv + r * width + head * hd, rows->keys + base, rows->values + base,
                       rows->write_at[r] - first + 1, hd, model->scale, scores + task * span, o + (r * H + head) * hd);
            }
#pragma omp single
            q = quantize_rows(o, B, H * hd, layer->out.G, xq, xd, xsum, gsum);
            w = &layer->out;
            qmatrix_rows(w, q, B, w->N * t / T, w->N * (t + 1) / T, nullptr, x, w->N, 1); /* x + o W_O^T */
#pragma omp barrier
#pragma omp single
            {
                for (i64 r = 0; r < B; r++) rms_norm(x + r * d, layer->norm2, d, model->eps, h + r * d);
                q = quantize_rows(h, B, d, layer->fc1.G, xq, xd, xsum, gsum);
            }
            w = &layer->fc1;
            qmatrix_rows(w, q, B, w->N * t / T, w->N * (t + 1) / T, nullptr, gate_up, w->N, 0);
#pragma omp barrier
#pragma omp single
            {
                for (i64 r = 0; r < B; r++) {
                    float *a = gate_up + r * 2 * ff, *out = gate_up + r * ff;  /* rows packed to (B, ff) in place */
                    for (i64 i = 0; i < ff; i++) out[i] = a[i] / (1.0f + expf(-a[i])) * a[ff + i];  /* SiLU(a) ⊙ b */
                }
                q = quantize_rows(gate_up, B, ff, layer->fc2.G, xq, xd, xsum, gsum);
            }
            w = &layer->fc2;
            qmatrix_rows(w, q, B, w->N * t / T, w->N * (t + 1) / T, nullptr, x, w->N, 1); /* x + (...) W_2^T */
#pragma omp barrier
        }
#pragma omp single
        if (!failed)
            for (i64 r = 0; r < B; r++) rms_norm(x + r * d, model->final_norm, d, model->eps, x + r * d);
    }
    free(h), free(qkv), free(o), free(gate_up), free(scores), free(angles), free(xq), free(xd), free(xsum), free(gsum);
    return failed;
}

#endif
