"""Writing GGUF files that llama.cpp opens: a Llama-architecture model with its tokenizer, matrices as Q8_0 or Q4_0.

The reverse of ``checkpoints.gguf``: glassformer names → Hugging Face Llama names (``llama_state_dict_to_hf``, which
splits [W_Q; W_K; W_V] and [W_gate; W_up]) → GGUF names; the rows of W_Q and W_K are permuted back to llama.cpp's
rotary pairing (``permute_rotary``, the inverse of ``unpermute_rotary``); every matrix is quantized with the
``gguf`` package's own block quantizer, norms stay float32. Quantized models are dequantized tensor by tensor first
(GGUF's blocks store one fp16 scale per 32 weights, so a glassformer int8 table of group 32 writes back exactly up
to that scale's rounding).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from glassformer.checkpoints.gguf import CONTROL, GGUF_LAYER_NAMES, GGUF_TOP_NAMES
from glassformer.checkpoints.huggingface_llama import llama_state_dict_to_hf
from glassformer.files import write_atomically

EXPORT_TYPES = ("q8_0", "q4_0")
NORMAL = 1  # tokenizer.ggml.token_type of an ordinary token


def permute_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face's rotary halves (i, i + d/2) → llama.cpp's neighbouring pairs (2i, 2i+1), rows of ``(N, in)``."""
    out_features = weight.size(0)
    return weight.reshape(heads, 2, out_features // heads // 2, -1).transpose(1, 2).reshape(out_features, -1)


def gguf_name(hf_name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` → ``blk.3.attn_q.weight`` (the inverse of ``gguf.hf_name``)."""
    for gguf, hf in GGUF_TOP_NAMES.items():
        if hf_name.startswith(hf + "."):
            return gguf + hf_name.removeprefix(hf)
    parts = hf_name.split(".")
    layer_part = ".".join(parts[3:-1])
    for gguf, hf in GGUF_LAYER_NAMES.items():
        if hf == layer_part:
            return f"blk.{parts[2]}.{gguf}.{parts[-1]}"
    raise ValueError(f"no GGUF name for the tensor {hf_name}")


def write_gguf(
    path: str | os.PathLike, config: dict, state_dict: dict[str, torch.Tensor], tokenizer: dict, kind: str = "q8_0"
) -> Path:
    """Write a Llama GGUF file: ``config`` a GPTConfig dict (rotary, RMSNorm, gated), ``state_dict`` float tensors in
    glassformer's names, ``tokenizer`` the ``tokenizer.ggml.*`` keys (``Tokenizer.gguf_metadata``), the matrices in
    ``kind`` ("q8_0" or "q4_0")."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    if kind not in EXPORT_TYPES:
        raise ValueError(f"unknown GGUF export type {kind!r}; choose one of {', '.join(EXPORT_TYPES)}")
    if config.get("positional") != "rope" or config.get("norm") != "rmsnorm" or not config.get("gated_ffn"):
        raise ValueError("only Llama-style models (rotary, RMSNorm, gated feed-forward) can be written as GGUF")
    if config.get("qk_norm") or config.get("activation") != "silu":
        raise ValueError("GGUF's llama layout has no QK-norm and no activation but SiLU; save in glassformer's format")
    qtype = GGMLQuantizationType.Q8_0 if kind == "q8_0" else GGMLQuantizationType.Q4_0
    heads = {"attn_q": config["num_heads"], "attn_k": config.get("num_kv_heads") or config["num_heads"]}
    d_model, num_heads = config["d_model"], config["num_heads"]

    def write(tmp: str) -> None:
        writer = GGUFWriter(tmp, "llama")
        writer.add_context_length(config["max_seq_length"])
        writer.add_embedding_length(d_model)
        writer.add_block_count(config["num_layers"])
        writer.add_feed_forward_length(config["d_ff"])
        writer.add_head_count(num_heads)
        writer.add_head_count_kv(heads["attn_k"])
        writer.add_rope_dimension_count(d_model // num_heads)
        writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
        writer.add_layer_norm_rms_eps(config["layer_norm_eps"])
        writer.add_vocab_size(config["vocab_size"])
        writer.add_file_type(7 if kind == "q8_0" else 2)  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q8_0 / _Q4_0
        for key, value in tokenizer.items():
            _add(writer, key, value)
        for name, tensor in llama_state_dict_to_hf(state_dict, config).items():
            target = gguf_name(name)
            array = tensor.detach().float().cpu()
            part = target.split(".")[-2] if target.startswith("blk.") else None
            if part in heads:
                array = permute_rotary(array.reshape(array.size(0), -1), heads[part]).reshape(array.shape)
            array = array.numpy()
            if array.ndim == 2 and array.shape[1] % 32 == 0:
                writer.add_tensor(target, quantize(array, qtype), raw_dtype=qtype)  # shape from the bytes
            else:
                writer.add_tensor(target, np.ascontiguousarray(array, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, write)
    return path


def _add(writer, key: str, value) -> None:
    from gguf import GGUFValueType

    if isinstance(value, list):
        kind = GGUFValueType.STRING if value and isinstance(value[0], str) else GGUFValueType.INT32
        writer.add_array(key, value) if kind == GGUFValueType.STRING else writer.add_array(key, [int(v) for v in value])
    elif isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    else:
        writer.add_string(key, str(value))


def tokenizer_metadata(tokenizer, bos_token_id=None, eos_token_id=None, pad_token_id=None) -> dict:
    """The ``tokenizer.ggml.*`` keys that describe a glassformer ``Tokenizer`` of byte-level BPE (GPT-2, Llama 3,
    SmolLM) in a GGUF file: tokens by id, merges, special tokens as CONTROL, the pre-tokenizer ("smollm" when
    digits are split apart, else "gpt2"), the chat template — what ``Tokenizer.from_gguf_metadata`` reads back."""
    spec = json.loads(tokenizer.backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise ValueError("only a byte-level BPE tokenizer (GPT-2, Llama 3, SmolLM) can be written into a GGUF file")
    tokens = [tokenizer.backend.id_to_token(i) for i in range(tokenizer.backend.get_vocab_size())]
    specials = {t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm" if "Digits" in json.dumps(spec.get("pre_tokenizer")) else "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [CONTROL if t in specials else NORMAL for t in tokens],
        "tokenizer.ggml.merges": [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])],
    }
    for key, value in (("bos", bos_token_id), ("eos", eos_token_id), ("padding", pad_token_id)):
        if value is not None:
            meta[f"tokenizer.ggml.{key}_token_id"] = int(value)
    if tokenizer.chat_template:
        meta["tokenizer.chat_template"] = tokenizer.chat_template
    return meta
