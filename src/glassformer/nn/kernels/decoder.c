/* One decoding step of a Llama-style decoder for one sequence, every layer in one call (glassformer.nn.fused_decoder
   says when it is used; the modules of glassformer.nn are the reference it is tested against):

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

   The threads share one parallel region for the whole step: each matrix's output rows are split among them, the
   attention heads too, and the small vector work between two products is done by one thread. */
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

/* rotate `heads` vectors of head_dim in place: (x_i, x_{i+d/2}) -> (x_i cos − x_{i+d/2} sin, x_{i+d/2} cos + x_i sin) */
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

/* x (d_model): in, the new token's embedding; out, the final norm of its hidden state. keys / values: the cache,
   (num_layers, 1, kv_heads, max_length, head_dim); the new position p is written into it. Returns 0, or 1 where
   memory could not be had. */
int glassformer_decode_step(const qdecoder *model, float *x, i64 p, float *keys, float *values, i64 max_length,
                            int threads) {
    const i64 d = model->d_model, H = model->num_heads, KV = model->kv_heads, hd = model->head_dim;
    const i64 ff = model->d_ff, wide = d > ff ? (d > H * hd ? d : H * hd) : (ff > H * hd ? ff : H * hd);
    const i64 layer_size = KV * max_length * hd; /* one layer's keys (or values) in the cache */
    float *h = malloc(sizeof(float) * d), *qkv = malloc(sizeof(float) * (H + 2 * KV) * hd);
    float *o = malloc(sizeof(float) * H * hd), *gate_up = malloc(sizeof(float) * 2 * ff);
    float *scores = malloc(sizeof(float) * H * (p + 1)), *angles = malloc(sizeof(float) * hd);
    int16_t *xq = malloc(sizeof(int16_t) * wide);
    float *xd = malloc(sizeof(float) * wide / BLOCK), *xsum = malloc(sizeof(float) * wide / BLOCK);
    float *gsum = malloc(sizeof(float) * wide / BLOCK);
    int failed = !(h && qkv && o && gate_up && scores && angles && xq && xd && xsum && gsum);
    qx q = {xq, xd, gsum, d};
    if (!failed) {
        for (i64 i = 0; i < hd / 2; i++) {  /* cos and sin of p θ_i, the angle taken in float32 as torch does */
            const float angle = (float)p * model->inv_freq[i];
            angles[i] = cosf(angle);
            angles[hd / 2 + i] = sinf(angle);
        }
    }
#pragma omp parallel num_threads(threads) if (!failed)
    {
        i64 t = 0, T = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        T = omp_get_num_threads();
#endif
        for (i64 l = 0; l < model->num_layers && !failed; l++) {
            const qlayer *layer = model->layers + l;
            float *k_cache = keys + l * layer_size, *v_cache = values + l * layer_size;
            const qmatrix *w;
#pragma omp single
            {
                rms_norm(x, layer->norm1, d, model->eps, h);
                q = quantize_rows(h, 1, d, layer->qkv.G, xq, xd, xsum, gsum);
            }
            w = &layer->qkv;
            qmatrix_rows(w, q, 1, w->N * t / T, w->N * (t + 1) / T, NULL, qkv, w->N, 0);
#pragma omp barrier
#pragma omp single
            {
                const float *cos_ = angles, *sin_ = angles + hd / 2;
                float rotary[2][hd]; /* cos and sin repeated over both halves, as rope takes them */
                for (i64 i = 0; i < hd; i++) rotary[0][i] = cos_[i % (hd / 2)], rotary[1][i] = sin_[i % (hd / 2)];
                rope(qkv, H + KV, hd, rotary[0], rotary[1]); /* queries and keys: the first H + KV heads */
                for (i64 g = 0; g < KV; g++) {
                    memcpy(k_cache + (g * max_length + p) * hd, qkv + (H + g) * hd, sizeof(float) * hd);
                    memcpy(v_cache + (g * max_length + p) * hd, qkv + (H + KV + g) * hd, sizeof(float) * hd);
                }
            }
#pragma omp for schedule(static)
            for (i64 head = 0; head < H; head++) {
                const i64 g = head / (H / KV);
                attend(qkv + head * hd, k_cache + g * max_length * hd, v_cache + g * max_length * hd, p + 1, hd,
                       model->scale, scores + head * (p + 1), o + head * hd);
            }
#pragma omp single
            q = quantize_rows(o, 1, H * hd, layer->out.G, xq, xd, xsum, gsum);
            w = &layer->out;
            qmatrix_rows(w, q, 1, w->N * t / T, w->N * (t + 1) / T, NULL, x, w->N, 1); /* x + o W_O^T */
#pragma omp barrier
#pragma omp single
            {
                rms_norm(x, layer->norm2, d, model->eps, h);
                q = quantize_rows(h, 1, d, layer->fc1.G, xq, xd, xsum, gsum);
            }
            w = &layer->fc1;
            qmatrix_rows(w, q, 1, w->N * t / T, w->N * (t + 1) / T, NULL, gate_up, w->N, 0);
#pragma omp barrier
#pragma omp single
            {
                for (i64 i = 0; i < ff; i++) {
                    const float a = gate_up[i];
                    gate_up[i] = a / (1.0f + expf(-a)) * gate_up[ff + i]; /* SiLU(a) ⊙ b */
                }
                q = quantize_rows(gate_up, 1, ff, layer->fc2.G, xq, xd, xsum, gsum);
            }
            w = &layer->fc2;
            qmatrix_rows(w, q, 1, w->N * t / T, w->N * (t + 1) / T, NULL, x, w->N, 1); /* x + (...) W_2^T */
#pragma omp barrier
        }
#pragma omp single
        if (!failed) rms_norm(x, model->final_norm, d, model->eps, x);
    }
    free(h), free(qkv), free(o), free(gate_up), free(scores), free(angles), free(xq), free(xd), free(xsum), free(gsum);
    return failed;
}
