/* glassformer's CPU kernels as torch operators (torch.library), built by torch.utils.cpp_extension on first use
   (glassformer.backends.cpu.extension) for the CPU at hand:

       glassformer::quantized_linear(x, codes, scales, offsets?, bias?, group_size, bf16)
                                                                      y = x W^T + b   (quantized.h, products.h)
       glassformer::decode_step(x, weights, group_sizes, inv_freq, keys!, values!, positions, first_row, num_heads,
                                kv_heads, eps, scale, one_sequence, layer_norm, gated, activation, block_table?, bf16,
                                memory_keys?, memory_values?, memory_lengths?, copies, position_bias?, post_norm,
                                qk_norm)
                                                                                       every layer of a step (decoder.h)
       glassformer::dequantize(codes, scales, offsets?, group_size)                     W in float32 (quantized.h)
       glassformer::top_log_probs(logits, k)           each row's k best log-softmax values and tokens (candidates.h)
       glassformer::simd()                 "AVX512-VNNI", "AVX2", "NEON-dotprod", "NEON" or "C": the path built
       glassformer::bf16_dot()             whether bf16 products multiply bfloat16 here (AVX512-BF16), else 16-bit

   The shapes the Python side gives (and its fake implementations, for torch.compile) are in
   glassformer.backends.cpu.quantized and glassformer.backends.cpu.decoder; every check here is a one-line error. */
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

#include "candidates.h"
#include "decoder.h"
#include "products.h"

namespace {

/* one quantized matrix over the tensors that hold it: int8 codes (N, K), or int4 codes uint8 (N, K / 2) with offsets;
   scales and offsets float16 (N, K / G) */
qmatrix matrix(const at::Tensor &codes, const at::Tensor &scales, const std::optional<at::Tensor> &offsets,
               int64_t group) {
    const bool int8 = codes.scalar_type() == at::kChar;
    TORCH_CHECK(int8 || codes.scalar_type() == at::kByte, "quantized codes must be int8 (int8) or uint8 (int4)");
    TORCH_CHECK(int8 != offsets.has_value(), "int4 codes need offsets and int8 codes take none");
    TORCH_CHECK(codes.dim() == 2 && codes.is_contiguous() && codes.device().is_cpu(), "codes: a contiguous CPU matrix");
    const int64_t N = codes.size(0), K = int8 ? codes.size(1) : 2 * codes.size(1);
    TORCH_CHECK(group > 0 && group % BLOCK == 0 && K % group == 0, "group size ", group, " does not fit K = ", K,
                ": a multiple of 32 dividing it");
    TORCH_CHECK(K / group <= MAX_GROUPS, "at most ", MAX_GROUPS, " groups a row: use a larger group size");
    for (const at::Tensor *t : {&scales, offsets ? &*offsets : &scales}) {
        TORCH_CHECK(t->scalar_type() == at::kHalf && t->is_contiguous() && t->dim() == 2 && t->size(0) == N &&
                        t->size(1) == K / group,
                    "scales and offsets: contiguous float16 (", N, ", ", K / group, ")");
    }
    const auto halves = [](const at::Tensor &t) { return (const uint16_t *)t.data_ptr(); };
    return {int8 ? 8 : 4, N, K, group, codes.data_ptr(), halves(scales), offsets ? halves(*offsets) : nullptr};
}

/* y (M, N) = x (M, K) W^T + bias; bias may be null; bf16: x taken in bfloat16 (products.h) */
void linear(const qmatrix *w, const float *x, i64 M, const float *bias, float *y, int threads, bool bf16) {
    const i64 K = w->K, N = w->N;
    xrows space(M, K, bf16);
#pragma omp parallel num_threads(threads)
    {
        i64 t, T;
        thread_index(&t, &T);
#pragma omp for schedule(static)
        for (i64 m = 0; m < M; m++) prepare_row(x + m * K, m, K, w->G, space);
        products(w, space, M, N * t / T, N * (t + 1) / T, bias, y, N, 0);
    }
}

at::Tensor quantized_linear(const at::Tensor &x, const at::Tensor &codes, const at::Tensor &scales,
                            const std::optional<at::Tensor> &offsets, const std::optional<at::Tensor> &bias,
                            int64_t group_size, bool bf16) {
    const qmatrix w = matrix(codes, scales, offsets, group_size);
    TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu(), "x: float32 on the CPU");
    TORCH_CHECK(x.dim() >= 1 && x.size(-1) == w.K, "x has ", x.size(-1), " features, the weight takes ", w.K);
    if (bias) {
        TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == w.N,
                    "bias: contiguous float32 (", w.N, ")");
    }
    const at::Tensor rows = x.reshape({-1, w.K}).contiguous();
    std::vector<int64_t> sizes = x.sizes().vec();
    sizes.back() = w.N;
    at::Tensor y = at::empty(sizes, x.options());
    if (rows.size(0) > 0) {
        linear(&w, rows.data_ptr<float>(), rows.size(0), bias ? bias->data_ptr<float>() : nullptr, y.data_ptr<float>(),
               at::get_num_threads(), bf16);
    }
    return y;
}

/* the float32 weight (N, K) that the codes, scales and offsets stand for */
at::Tensor dequantize_op(const at::Tensor &codes, const at::Tensor &scales, const std::optional<at::Tensor> &offsets,
                         int64_t group_size) {
    const qmatrix w = matrix(codes, scales, offsets, group_size);
    at::Tensor out = at::empty({w.N, w.K}, scales.options().dtype(at::kFloat));
    float *y = out.data_ptr<float>();
    const int threads = at::get_num_threads();
#pragma omp parallel num_threads(threads)
    {
        i64 t, T;
        thread_index(&t, &T);
        dequantize_rows(&w, w.N * t / T, w.N * (t + 1) / T, y);
    }
    return out;
}

/* a float32 vector of n on the CPU */
const float *float_vector(const std::optional<at::Tensor> &t, int64_t n, const char *what) {
    TORCH_CHECK(t && t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == n && t->device().is_cpu(),
                what, ": contiguous float32 (", n, ")");
    return t->data_ptr<float>();
}

/* a float32 vector of n, or null where the tensor is absent */
const float *optional_vector(const std::optional<at::Tensor> &t, int64_t n, const char *what) {
    return t ? float_vector(t, n, what) : nullptr;
}

/* γ_1, β_1?, γ_2, β_2?, then (codes, scales, offsets?, bias?) of W_QKV, W_O, W_1, W_2; with a memory also γ_c, β_c?
   and (codes, scales, offsets?, bias?) of W_Qc, W_Oc; then the final norm's γ?, β? (none: a post-norm stack's) */
constexpr int64_t PER_LAYER = 20, PER_LAYER_CROSS = 30;

int activation_code(const std::string &name) {
    const char *names[] = {"silu", "gelu_tanh", "gelu", "relu", "relu2"}; /* SILU … RELU2 */
    for (int i = 0; i < 5; i++)
        if (name == names[i]) return i;
    TORCH_CHECK(false, "activation: silu, gelu_tanh, gelu, relu or relu2, not ", name);
}

/* the quantized matrix at weights[at …]: (codes, scales, offsets?, bias?), and its bias (or null) */
qmatrix layer_matrix(const c10::List<std::optional<at::Tensor>> &weights, int64_t at, int64_t group,
                     const float **bias) {
    const std::optional<at::Tensor> codes = weights.get(at), s = weights.get(at + 1);
    TORCH_CHECK(codes && s, "weights: codes and scales of every matrix");
    const qmatrix m = matrix(*codes, *s, weights.get(at + 2), group);
    *bias = optional_vector(weights.get(at + 3), m.N, "a matrix's bias");
    return m;
}

/* an encoder-decoder's memory (decoder.h's qmemory) over its tensors: keys and values (layers, sources, kv_heads,
   longest, head_dim) float32, lengths (sources) int64 in 1 … longest, each source serving `copies` of the B rows */
qmemory memory_of(const at::Tensor &keys, const at::Tensor &values, const at::Tensor &lengths, int64_t copies,
                  int64_t L, int64_t kv_heads, int64_t hd, int64_t B) {
    TORCH_CHECK(keys.sizes() == values.sizes() && keys.dim() == 5 && keys.size(0) == L && keys.size(2) == kv_heads &&
                    keys.size(4) == hd && keys.is_contiguous() && values.is_contiguous() &&
                    keys.scalar_type() == at::kFloat && values.scalar_type() == at::kFloat && keys.device().is_cpu(),
                "memory_keys, memory_values: contiguous float32 (layers, sources, kv_heads, source length, head_dim)");
    const int64_t S = keys.size(1), longest = keys.size(3);
    TORCH_CHECK(copies >= 1 && S * copies == B, "memory: ", S, " sources × ", copies, " copies for ", B, " rows");
    TORCH_CHECK(lengths.scalar_type() == at::kLong && lengths.is_contiguous() && lengths.dim() == 1 &&
                    lengths.size(0) == S, "memory_lengths: contiguous int64 (sources)");
    const int64_t *n = lengths.data_ptr<int64_t>();
    for (int64_t s = 0; s < S; s++)
        TORCH_CHECK(n[s] >= 1 && n[s] <= longest, "memory_lengths: source ", s, " has ", n[s], " positions");
    const qrows where = {nullptr, nullptr, nullptr, keys.data_ptr<float>(), values.data_ptr<float>(), keys.stride(1),
                      keys.stride(0), longest, nullptr, 0, 0, 0, 0};
    return {where, n, copies, longest};
}

at::Tensor decode_step_op(const at::Tensor &x, const c10::List<std::optional<at::Tensor>> &weights,
                       at::IntArrayRef group_sizes, const at::Tensor &inv_freq, at::Tensor &keys, at::Tensor &values,
                       const at::Tensor &positions, int64_t first_row, int64_t num_heads, int64_t kv_heads,
                       double eps, double scale, bool one_sequence, bool layer_norm, bool gated,
                       c10::string_view activation, const std::optional<at::Tensor> &block_table, bool bf16,
                       const std::optional<at::Tensor> &memory_keys, const std::optional<at::Tensor> &memory_values,
                       const std::optional<at::Tensor> &memory_lengths, int64_t copies,
                       const std::optional<at::Tensor> &position_bias, bool post_norm, bool qk_norm) {
    TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu() && x.dim() == 3 && x.size(1) == 1,
                "x: float32 (batch, 1, d_model) on the CPU");
    const bool cross = memory_keys.has_value();
    TORCH_CHECK(cross == memory_values.has_value() && cross == memory_lengths.has_value(),
                "memory_keys, memory_values and memory_lengths: all three, or none");
    const int64_t per_layer = cross ? PER_LAYER_CROSS : PER_LAYER, matrices = cross ? 6 : 4;
    const int64_t B = x.size(0), d = x.size(2), L = (int64_t)(weights.size() - 2) / per_layer;
    TORCH_CHECK(L >= 1 && (int64_t)weights.size() == L * per_layer + 2, "weights: ", per_layer,
                " per layer and the final norm's 2");
    TORCH_CHECK((int64_t)group_sizes.size() == matrices * L, "group_sizes: ", matrices, " per layer");
    const bool bf16_cache = keys.scalar_type() == at::kBFloat16;
    TORCH_CHECK(keys.sizes() == values.sizes() && keys.dim() == 5 && keys.size(0) == L && keys.is_contiguous() &&
                    values.is_contiguous() && (bf16_cache || keys.scalar_type() == at::kFloat) &&
                    values.scalar_type() == keys.scalar_type(),
                "keys, values: contiguous float32 or bfloat16 (layers, rows, kv_heads, max_length, head_dim), or "
                "with a block_table (layers, blocks, kv_heads, block, head_dim)");
    const bool paged = block_table.has_value();
    const int64_t rows_held = paged ? block_table->size(0) : keys.size(1);
    const int64_t hd = keys.size(4);
    TORCH_CHECK(keys.size(2) == kv_heads && kv_heads > 0 && num_heads % kv_heads == 0 && hd % 2 == 0,
                "the cache's heads do not fit num_heads and kv_heads");
    TORCH_CHECK(first_row >= 0 && first_row + (one_sequence ? 1 : B) <= rows_held, "the rows lie outside the cache");
    if (paged) {
        TORCH_CHECK(block_table->scalar_type() == at::kLong && block_table->dim() == 2 &&
                        block_table->is_contiguous() && block_table->size(1) > 0,
                    "block_table: contiguous int64 (rows, blocks per row)");
        const int64_t *t = block_table->data_ptr<int64_t>();
        for (int64_t i = 0; i < block_table->numel(); i++)
            TORCH_CHECK(t[i] >= 0 && t[i] < keys.size(1), "block_table: block ", t[i], " is not in the cache");
    }
    TORCH_CHECK(positions.scalar_type() == at::kLong && positions.is_contiguous() && positions.dim() == 2 &&
                    positions.size(0) == 3 && positions.size(1) == B,
                "positions: contiguous int64 (3, batch): write_at, first, rotary_at");
    const bool rotary = inv_freq.numel() > 0; /* an empty inv_freq: positions were added to the embeddings */
    std::vector<qlayer> layers(L);
    for (int64_t l = 0; l < L; l++) {
        const int64_t at = l * per_layer;
        qmatrix m[6] = {};
        const float *bias[6] = {};
        for (int i = 0; i < 4; i++) m[i] = layer_matrix(weights, at + 4 + 4 * i, group_sizes[matrices * l + i], &bias[i]);
        for (int i = 4; i < matrices; i++)
            m[i] = layer_matrix(weights, at + 22 + 4 * (i - 4), group_sizes[matrices * l + i], &bias[i]);
        layers[l] = {float_vector(weights.get(at), d, "norm1"), float_vector(weights.get(at + 2), d, "norm2"),
                     optional_vector(weights.get(at + 1), d, "norm1's bias"),
                     optional_vector(weights.get(at + 3), d, "norm2's bias"), m[0], m[1], m[2], m[3],
                     bias[0], bias[1], bias[2], bias[3],
                     cross ? float_vector(weights.get(at + 20), d, "the cross-attention's norm") : nullptr,
                     cross ? optional_vector(weights.get(at + 21), d, "the cross-attention's norm's bias") : nullptr,
                     m[4], m[5], bias[4], bias[5]};
        TORCH_CHECK(m[0].K == d && m[0].N == (num_heads + 2 * kv_heads) * hd && m[1].K == num_heads * hd &&
                        m[1].N == d && m[2].K == d && m[2].N == (gated ? 2 : 1) * m[3].K && m[3].N == d,
                    "layer ", l, "'s matrices do not fit d_model = ", d, ", the heads and the feed-forward");
        TORCH_CHECK(!cross || (m[4].K == d && m[4].N == num_heads * hd && m[5].K == num_heads * hd && m[5].N == d),
                    "layer ", l, "'s cross-attention matrices do not fit d_model = ", d, " and the heads");
    }
    qdecoder model = {L, d, num_heads, kv_heads, hd, layers[0].fc2.K, (float)eps, (float)scale,
                      layer_norm, gated, activation_code(std::string(activation)), rotary, post_norm, qk_norm,
                      layers.data(),
                      optional_vector(weights.get(L * per_layer), d, "final_norm"),
                      optional_vector(weights.get(L * per_layer + 1), d, "final_norm's bias"),
                      rotary ? float_vector(std::optional<at::Tensor>(inv_freq), hd / 2, "inv_freq") : nullptr,
                      nullptr, 0};
    if (position_bias) {
        TORCH_CHECK(position_bias->scalar_type() == at::kFloat && position_bias->is_contiguous() &&
                        position_bias->dim() == 2 && position_bias->size(0) == num_heads && position_bias->size(1) > 0,
                    "position_bias: contiguous float32 (num_heads, distances)");
        model.position_bias = position_bias->data_ptr<float>(), model.bias_width = position_bias->size(1);
    }
    qmemory memory = {};
    if (cross) memory = memory_of(*memory_keys, *memory_values, *memory_lengths, copies, L, kv_heads, hd, B);
    const int64_t offset = paged ? 0 : first_row * keys.stride(1);
    const int64_t *p = positions.data_ptr<int64_t>();
    /* one_sequence: every row is a position of the same sequence (a block of tokens: speculative decoding's check,
       a prompt), so all share cache row first_row; each row's keys are written before any row attends, and row r
       attends to positions first[r] .. write_at[r] only: causal within the block */
    const int64_t row_stride = one_sequence ? 0 : keys.stride(1);
    const int64_t width = paged ? block_table->size(1) : 0;
    const int64_t bytes = offset * keys.element_size();
    const qrows rows = {p, p + B, p + 2 * B, (char *)keys.data_ptr() + bytes, (char *)values.data_ptr() + bytes,
                        row_stride, keys.stride(0), keys.size(3),
                        paged ? block_table->data_ptr<int64_t>() + first_row * width : nullptr,
                        one_sequence ? 0 : width, keys.stride(1), width, bf16_cache};
    at::Tensor hidden = x.reshape({B, d}).clone();
    const int failed = decode_step(&model, hidden.data_ptr<float>(), B, &rows, cross ? &memory : nullptr,
                                   at::get_num_threads(), bf16);
    TORCH_CHECK(!failed, "decode_step: a row's positions lie outside the cache or its position bias, or memory could "
                "not be had");
    return hidden.view({B, 1, d});
}

/* beam search's candidates: each row's k best log-softmax values of logits (..., V), best first, and their tokens */
std::tuple<at::Tensor, at::Tensor> top_log_probs_op(const at::Tensor &logits, int64_t k) {
    TORCH_CHECK(logits.scalar_type() == at::kFloat && logits.device().is_cpu() && logits.dim() >= 1,
                "logits: float32 on the CPU");
    const int64_t V = logits.size(-1);
    TORCH_CHECK(k >= 1 && k <= V, "k = ", k, ": between 1 and the ", V, " logits of a row");
    const at::Tensor z = logits.reshape({-1, V}).contiguous();
    std::vector<int64_t> sizes = logits.sizes().vec();
    sizes.back() = k;
    at::Tensor values = at::empty(sizes, logits.options()), tokens = at::empty(sizes, logits.options().dtype(at::kLong));
    top_log_probs(z.data_ptr<float>(), z.size(0), V, (int)k, values.data_ptr<float>(), tokens.data_ptr<int64_t>(),
                  at::get_num_threads());
    return {values, tokens};
}

std::string simd() { return simd_path(); }

bool bf16_dot_op() { return bf16_dot(); }

}  // namespace

TORCH_LIBRARY(glassformer, m) {
    m.def("quantized_linear(Tensor x, Tensor codes, Tensor scales, Tensor? offsets, Tensor? bias, int group_size, "
          "bool bf16=False) -> Tensor");
    m.def("decode_step(Tensor x, Tensor?[] weights, int[] group_sizes, Tensor inv_freq, Tensor(a!) keys, "
          "Tensor(b!) values, Tensor positions, int first_row, int num_heads, int kv_heads, float eps, float scale, "
          "bool one_sequence=False, bool layer_norm=False, bool gated=True, str activation=\"silu\", "
          "Tensor? block_table=None, bool bf16=False, Tensor? memory_keys=None, Tensor? memory_values=None, "
          "Tensor? memory_lengths=None, int copies=1, Tensor? position_bias=None, bool post_norm=False, "
          "bool qk_norm=False) -> Tensor");
    m.def("dequantize(Tensor codes, Tensor scales, Tensor? offsets, int group_size) -> Tensor");
    m.def("top_log_probs(Tensor logits, int k) -> (Tensor, Tensor)");
    m.def("simd() -> str", &simd);
    m.def("bf16_dot() -> bool", &bf16_dot_op);
}

TORCH_LIBRARY_IMPL(glassformer, CPU, m) {
    m.impl("quantized_linear", &quantized_linear);
    m.impl("decode_step", &decode_step_op);
    m.impl("dequantize", &dequantize_op);
    m.impl("top_log_probs", &top_log_probs_op);
}
