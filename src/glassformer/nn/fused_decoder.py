"""A whole decoding step of a quantized Llama-style decoder in one call to compiled code (``kernels/decoder.c``).

Decoding one token through the modules costs, beside the matrix products, some twenty small operations per layer,
each a Python call and a trip through torch's dispatcher: with weights of 4 bits those outweigh the products. For
one sequence on the CPU, ``decode_step`` runs every layer and the final norm of a stack of ``DecoderLayer``s in C,
with the same quantized products (``kernels/quantized.h``) and the same formulas as the modules:

    h = RMSNorm_1(x);  q, k, v = h [W_Q; W_K; W_V]ᵀ;  q, k = RoPE(q, p), RoPE(k, p);  cache[p] = k, v
    x = x + softmax(s · q Kᵀ) V W_Oᵀ                   (grouped-query: head h reads key/value head h / (H / KV))
    x = x + (SiLU(RMSNorm_2(x) W_gateᵀ) ⊙ RMSNorm_2(x) W_upᵀ) W_2ᵀ

It serves a step when everything fits: one new token of one sequence, a ``KVCache`` in float32, no gradient, eval
mode, pre-norm layers with RMSNorm, rotary positions, self-attention only, a SwiGLU feed-forward, no biases, and
every matrix quantized in a format glassformer's kernel takes. Anything else (GPT-2's layout, batches, padding,
float weights, attention weights asked for) returns None and the modules run. It is probed once against the modules
(``runtime.kernel_works("quantized_decoder_step")``), and ``tests/nn/test_fused_decoder.py`` compares it with them
token by token.

What it prepares for a model (the C structures that point at the weights) is made on the first step with a new
cache and kept while the weights stay the same tensors with the same contents.
"""

from __future__ import annotations

import ctypes
import functools
import weakref

import torch
from torch import nn

from glassformer import runtime
from glassformer.nn import kernels
from glassformer.nn.cache import KVCache, SlotCache, SlotView
from glassformer.nn.norm import RMSNorm
from glassformer.nn.quantization import QuantizedWeight, native_fits, tensor_state

i64, pointer = ctypes.c_int64, ctypes.c_void_p


class _Matrix(ctypes.Structure):
    _fields_ = [("kind", i64), ("N", i64), ("K", i64), ("G", i64), ("codes", pointer), ("scales", pointer),
                ("offsets", pointer)]  # fmt: skip


class _Layer(ctypes.Structure):
    _fields_ = [("norm1", pointer), ("norm2", pointer), ("qkv", _Matrix), ("out", _Matrix), ("fc1", _Matrix),
                ("fc2", _Matrix)]  # fmt: skip


class _Decoder(ctypes.Structure):
    _fields_ = [("num_layers", i64), ("d_model", i64), ("num_heads", i64), ("kv_heads", i64), ("head_dim", i64),
                ("d_ff", i64), ("eps", ctypes.c_float), ("scale", ctypes.c_float), ("layers", ctypes.POINTER(_Layer)),
                ("final_norm", pointer), ("inv_freq", pointer)]  # fmt: skip


class _Rows(ctypes.Structure):
    _fields_ = [("write_at", pointer), ("first", pointer), ("rotary_at", pointer), ("keys", pointer),
                ("values", pointer), ("row_stride", i64), ("layer_stride", i64), ("max_length", i64)]  # fmt: skip


@functools.cache
def _library() -> ctypes.CDLL | None:
    library = kernels.load("decoder")
    if library is not None:
        library.glassformer_decode_step.argtypes = [ctypes.POINTER(_Decoder), pointer, i64, ctypes.POINTER(_Rows),
                                                    ctypes.c_int]  # fmt: skip
        library.glassformer_decode_step.restype = ctypes.c_int
    return library


def _weight(linear) -> QuantizedWeight | None:
    """The quantized weight of a ``Linear`` the kernel takes (no bias), else None."""
    weight = getattr(linear, "quantized", None)
    ok = weight is not None and linear.bias is None and native_fits(weight) and weight.scales.dtype == torch.float32
    return weight if ok else None


def _matrix(weight: QuantizedWeight) -> _Matrix:
    offsets = 0 if weight.offsets is None else weight.offsets.data_ptr()
    kind = 8 if weight.kind == "int8" else 4
    return _Matrix(kind, weight.out_features, weight.in_features, weight.group_size, weight.codes.data_ptr(),
                   weight.scales.data_ptr(), offsets)  # fmt: skip


def _norm(norm, eps: float) -> torch.Tensor | None:
    """γ of an RMSNorm with this ε, float32 and contiguous on the CPU, else None."""
    if not isinstance(norm, RMSNorm) or norm.eps != eps:
        return None
    weight = norm.weight
    return weight if weight.dtype == torch.float32 and weight.is_contiguous() and weight.device.type == "cpu" else None


class _Plan:
    """The C structures of one decoder and the tensors they point at (kept alive, and compared to see whether the
    weights changed)."""

    def __init__(self, layers: nn.ModuleList, final_norm: nn.Module, rotary: nn.Module):
        first = layers[0]
        attention, eps = first.self_attn, final_norm.eps
        self.d_model = attention.d_model
        self.tensors: list[torch.Tensor] = [rotary.inv_freq]
        structures = []
        for layer in layers:
            attn, ffn = layer.self_attn, layer.ffn
            norms = [_norm(layer.norm1, eps), _norm(layer.norm3, eps)]
            weights = [_weight(attn.qkv_proj), _weight(attn.out_proj), _weight(ffn.fc1), _weight(ffn.fc2)]
            fits = (
                layer.cross_attn is None and layer.norm_first and ffn.gated and ffn.activation == "silu"
                and attn.num_heads == attention.num_heads and attn.num_kv_heads == attention.num_kv_heads
                and attn.d_k == attention.d_k and attn.scale == attention.scale
            )  # fmt: skip
            if not fits or any(t is None for t in norms + weights):
                raise ValueError("not a quantized Llama-style layer")
            for w in weights:
                self.tensors += [t for t in (w.codes, w.scales, w.offsets) if t is not None]
            self.tensors += norms
            structures.append(_Layer(norms[0].data_ptr(), norms[1].data_ptr(), *(_matrix(w) for w in weights)))
        final = _norm(final_norm, eps)
        if final is None or rotary.inv_freq.dtype != torch.float32 or rotary.head_dim != attention.d_k:
            raise ValueError("not a final RMSNorm and rotary positions")
        self.tensors.append(final)
        self.layers = (_Layer * len(structures))(*structures)
        self.decoder = _Decoder(
            len(structures), attention.d_model, attention.num_heads, attention.num_kv_heads, attention.d_k,
            first.ffn.fc2.in_features, eps, attention.scale, self.layers, final.data_ptr(),
            rotary.inv_freq.data_ptr(),
        )  # fmt: skip
        self.states = [tensor_state(t) for t in self.tensors]

    def is_current(self, tensors: list[torch.Tensor]) -> bool:
        return len(tensors) == len(self.tensors) and all(
            a is b and tensor_state(a) == state for a, b, state in zip(tensors, self.tensors, self.states, strict=True)
        )


def _tensors(layers: nn.ModuleList, final_norm: nn.Module, rotary: nn.Module) -> list[torch.Tensor]:
    """The tensors a plan for these modules would point at, in its order (to see whether a kept plan is current)."""
    tensors = [rotary.inv_freq]
    for layer in layers:
        for linear in (layer.self_attn.qkv_proj, layer.self_attn.out_proj, layer.ffn.fc1, layer.ffn.fc2):
            w = linear.quantized
            tensors += [t for t in (w.codes, w.scales, w.offsets) if t is not None]
        tensors += [layer.norm1.weight, layer.norm3.weight]
    return [*tensors, final_norm.weight]


_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # layers -> their _Plan, or the reason there is none
_plan_of_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # a cache's storage -> its steps' plan


def _plan(layers: nn.ModuleList, final_norm: nn.Module, rotary: nn.Module) -> _Plan | None:
    kept = _plans.get(layers)
    try:
        if isinstance(kept, _Plan) and kept.is_current(_tensors(layers, final_norm, rotary)):
            return kept
    except AttributeError:  # a matrix is no longer quantized
        pass
    try:
        plan = _Plan(layers, final_norm, rotary)
    except (ValueError, AttributeError, TypeError):  # not this kind of decoder: the modules serve it
        plan = None
    _plans[layers] = plan
    return plan


def takes(layers: nn.ModuleList, final_norm: nn.Module, rotary: nn.Module | None) -> bool:
    """Whether ``decode_step`` serves this stack at all: the kernel works here and the layers are its kind
    (quantized Llama-style matrices, float32 norms)."""
    if rotary is None or not runtime.kernel_works("quantized_decoder_step"):
        return False
    return _plan(layers, final_norm, rotary) is not None


def _rows(cache: KVCache | SlotView, batch: int, attention_mask: torch.Tensor | None) -> tuple | None:
    """``(positions (3, batch): write_at, first, rotary_at; the cache's storage; the rows' first index in it)``, or
    None where the rows are not sequences the step takes: a ``KVCache`` whose rows may start with padding
    (``attention_mask`` ``[0 … 0 1 … 1]``), or a ``SlotView`` with its own mask (``view.attention_mask(1)``)."""
    if isinstance(cache, KVCache):
        storage, start, length = cache, 0, cache.length
        write_at = torch.full((batch,), length, dtype=torch.long)
        first = torch.zeros(batch, dtype=torch.long)
        if attention_mask is not None:  # left padding: each row's real tokens start at its first 1
            mask = attention_mask.to("cpu", torch.long)
            first = mask.argmax(-1)
            if not torch.equal(mask.sum(-1), length + 1 - first):
                return None
    elif isinstance(cache, SlotView):
        storage, start = cache.slots, cache.start
        write_at = torch.tensor(cache.row_lengths, dtype=torch.long)
        first = torch.zeros(batch, dtype=torch.long)
        if attention_mask is not None and not torch.equal(attention_mask.cpu().long(), cache.attention_mask(1).cpu()):
            return None
    else:
        return None
    keys = storage.keys
    if keys.dtype != torch.float32 or keys.device.type != "cpu" or not keys.is_contiguous():
        return None
    if keys.size(1) - start < batch or int(write_at.max()) >= storage.max_length:
        return None
    return torch.stack((write_at, first, write_at - first)), storage, start


def decode_step(
    layers: nn.ModuleList,
    final_norm: nn.Module,
    rotary: nn.Module | None,
    x: torch.Tensor,
    cache: KVCache | SlotView | None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The hidden states after every layer and the final norm, ``(batch, 1, d_model)``, for one new token per row
    whose embeddings are ``x`` ``(batch, 1, d_model)``; their keys and values are written into ``cache`` (the
    caller advances it). ``attention_mask`` as ``GPT.forward`` takes it. None where the fused step does not serve
    these inputs: the caller runs the modules."""
    if (
        rotary is None
        or cache is None
        or x.dim() != 3
        or x.size(1) != 1
        or x.dtype != torch.float32
        or x.device.type != "cpu"
        or torch.is_grad_enabled()
        or layers.training
    ):
        return None
    storage = cache.slots if isinstance(cache, SlotView) else cache
    if not isinstance(storage, KVCache | SlotCache):
        return None
    plan = _plan_of_cache.get(storage)
    if plan is None:  # the first step with this cache: made (or checked) once per generate call, or per server
        plan = _plan(layers, final_norm, rotary) if runtime.kernel_works("quantized_decoder_step") else None
        _plan_of_cache[storage] = plan or False
    if not plan:  # a model the step does not take: known after one look, nothing more per step
        return None
    rows = _rows(cache, x.size(0), attention_mask)
    return None if rows is None else _run(plan, x, rows)


def _run(plan: _Plan, x: torch.Tensor, rows: tuple) -> torch.Tensor:
    """The C step for ``x`` ``(batch, 1, d_model)`` at the cache positions ``rows`` (``_rows``)."""
    positions, storage, start = rows
    keys, values = storage.keys, storage.values  # (num_layers, rows, kv_heads, max_length, head_dim)
    offset = start * keys.stride(1) * keys.element_size()
    where = _Rows(positions[0].data_ptr(), positions[1].data_ptr(), positions[2].data_ptr(), keys.data_ptr() + offset,
                  values.data_ptr() + offset, keys.stride(1), keys.stride(0), storage.max_length)  # fmt: skip
    hidden = x.reshape(x.size(0), -1).clone()
    if _library().glassformer_decode_step(plan.decoder, hidden.data_ptr(), x.size(0), where, torch.get_num_threads()):
        raise MemoryError("the fused decoding step could not allocate its working memory")
    return hidden.view(x.size(0), 1, -1)


def _probe() -> None:
    """Two quantized Llama-style layers (int4 and int8 matrices), two rows (one left-padded), four tokens: the fused
    step must give the modules' hidden states and cache."""
    from glassformer.nn.config import BlockConfig
    from glassformer.nn.layers import DecoderLayer
    from glassformer.nn.rotary import RotaryEmbedding

    if _library() is None:
        raise RuntimeError(kernels.why_not.get("decoder", "the decoder kernel is not built"))
    torch.manual_seed(0)
    block = BlockConfig(
        d_model=64, num_heads=4, num_kv_heads=2, d_ff=96, norm="rmsnorm", norm_first=True, position="rope",
        gated_ffn=True, activation="silu", attention_bias=False, ffn_bias=False,
    )  # fmt: skip
    layers = nn.ModuleList(DecoderLayer(block, cross_attention=False) for _ in range(2)).eval()
    final_norm, rotary = RMSNorm(64, block.layer_norm_eps), RotaryEmbedding(16, 10000.0)
    for i, layer in enumerate(layers):
        for linear in (layer.self_attn.qkv_proj, layer.self_attn.out_proj, layer.ffn.fc1, layer.ffn.fc2):
            linear.quantize("int4" if i == 0 else "int8", 32)
    plan, x = _Plan(layers, final_norm, rotary), torch.randn(4, 2, 1, 64)
    ours, theirs = KVCache(2, 2, 2, 8, 16), KVCache(2, 2, 2, 8, 16)
    with torch.no_grad():
        for position in range(4):  # two rows; the second starts with a pad at position 0
            mask = torch.tensor([[1] * (position + 1), [0] + [1] * position])
            hidden = _run(plan, x[position], _rows(ours, 2, mask if position else None))
            ours.advance(1)
            h = x[position]
            cos_sin = rotary((mask.cumsum(-1) - 1).clamp(min=0)[:, -1:], torch.float32)
            self_mask = mask.bool()[:, None, None, :] if position else None
            for i, layer in enumerate(layers):
                h, _, _ = layer(h, self_mask=self_mask, cache=theirs.layer(i), rotary=cos_sin)
            theirs.advance(1)
            expected = final_norm(h)
            if not (hidden - expected).norm() <= 1e-3 * expected.norm():
                raise RuntimeError(f"the fused decoding step differs from the modules at position {position}")
    same = [torch.allclose(a, b, atol=1e-3) for a, b in ((ours.keys, theirs.keys), (ours.values, theirs.values))]
    if not all(same):
        raise RuntimeError("the fused decoding step wrote other keys or values than the modules")


runtime.register_kernel("quantized_decoder_step", _probe)
