"""GGUF files (llama.cpp's format): metadata → config, tensors → float32, the tokenizer and chat template.

A GGUF file carries everything in one place: key/value metadata (``llama.block_count``, ``tokenizer.ggml.tokens``,
``tokenizer.chat_template``, ...) and tensors, often quantized (Q4_1, Q8_0: blocks of 32 weights sharing a scale).
``checkpoints.gguf_file`` reads both; ``gguf.quants.dequantize`` turns any tensor into float32.

GGUF names → Hugging Face Llama names (then ``checkpoints.huggingface_llama`` maps those to glassformer's):

    token_embd            model.embed_tokens          output_norm         model.norm
    output                lm_head (absent: tied)      blk.{i}.attn_norm   model.layers.{i}.input_layernorm
    blk.{i}.attn_{q,k,v}  self_attn.{q,k,v}_proj      blk.{i}.attn_output self_attn.o_proj
    blk.{i}.ffn_norm      post_attention_layernorm    blk.{i}.ffn_{gate,up,down}  mlp.{gate,up,down}_proj

Quantized tensors either become float32 (``gguf.quants.dequantize``, the default) or, when the model is loaded
quantized, go straight into glassformer's int8/int4 layouts where the block format maps exactly
(``glassformer.nn.quantization``), one tensor at a time, so that no float32 model is ever built:

    Q8_0   blocks of 32: fp16 d, 32 int8 q           w = d q            → int8, group 32, scale d
    Q4_0   blocks of 32: fp16 d, 16 bytes of codes   w = d (q − 8)      → int4, group 32, scale d, offset −8 d
    Q4_1   blocks of 32: fp16 d, fp16 m, 16 bytes    w = d q + m        → int4, group 32, scale d, offset m

(the 16 bytes hold code j in the low nibble of byte j and code j + 16 in its high nibble, as glassformer's int4
does). Other tensors are dequantized and, if a quantized kind was asked for, quantized to it.

llama.cpp rotates neighbouring dimensions (2i, 2i+1) with RoPE where Hugging Face (and glassformer) rotate
dimension i with i + d/2. Its converter therefore permutes the rows of W_Q and W_K within each head:
``w.reshape(heads, 2, d/2, in).swapaxes(1, 2)``; ``unpermute_rotary`` undoes it (swapping the axes back).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from glassformer.checkpoints.gguf_file import GGUFFile

GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GGUF_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
CONTROL, USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values of special tokens
# tokenizer.ggml.pre: how text is split before BPE (llama.cpp's pre-tokenizer types that glassformer knows)
PRE_TOKENIZERS = ("gpt2", "smollm")


def find_gguf(path: str | os.PathLike) -> Path | None:
    """``path`` itself if it is a .gguf file, the single .gguf file of a directory without config.json, else None."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        files = sorted(path.glob("*.gguf"))
        if len(files) > 1:
            raise ValueError(f"{path} holds several GGUF files ({', '.join(f.name for f in files)}); pass one of them")
        return files[0] if files else None
    return None


def open_gguf(path: str | os.PathLike) -> tuple[GGUFFile, dict]:
    """``(file, metadata)`` of a GGUF file (``checkpoints.gguf_file``). The last file opened is kept: loading a model
    and then its tokenizer parses it once."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    stat = path.stat()
    return _open_gguf(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def forget_gguf() -> None:
    """Drop the file ``open_gguf`` keeps (its metadata and its mapping): called once
    the model and its tokenizer are loaded."""
    _open_gguf.cache_clear()


@lru_cache(maxsize=1)
def _open_gguf(path: str, mtime_ns: int, size: int):
    try:
        reader = GGUFFile(path)
        return reader, reader.metadata
    except Exception as e:  # gguf raises what numpy and struct raise on a damaged file
        raise ValueError(f"{path} is not a readable GGUF file ({type(e).__name__}: {str(e)[:200]})") from None


def unpermute_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of W_Q / W_K rows ``(heads * head_dim, in)``: within each head, rows
    (0, 1, 2, 3, ...) = pairs (2i, 2i+1) go back to the halves (i, i + head_dim / 2)."""
    out_features = weight.size(0)
    return weight.reshape(heads, out_features // heads // 2, 2, -1).transpose(1, 2).reshape(out_features, -1)


def gguf_config(metadata: dict, tensor_names: set[str]) -> dict:
    """GGUF metadata → ``GPTConfig`` fields (Llama architecture only)."""
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture {arch!r} is not supported; glassformer reads 'llama' GGUF files")

    def key(name, default=None):
        return metadata.get(f"{arch}.{name}", default)

    required = ("embedding_length", "attention.head_count", "block_count", "feed_forward_length")
    missing = [f"{arch}.{name}" for name in required if key(name) is None]
    if missing:
        raise ValueError(f"the GGUF file lacks the metadata {', '.join(missing)}; it is incomplete or not a model")

    scaling = key("rope.scaling.type", "none")
    if scaling not in ("none", None) and key("rope.scaling.factor", 1.0) != 1.0:
        raise ValueError(f"scaled rotary embeddings (rope.scaling.type={scaling!r}) are not supported")
    d_model, heads = int(key("embedding_length")), int(key("attention.head_count"))
    if int(key("rope.dimension_count", d_model // heads)) != d_model // heads:
        raise ValueError("the GGUF file rotates only part of each head (rope.dimension_count); not supported")
    tokens = metadata.get("tokenizer.ggml.tokens")
    return {
        "model_type": "gpt",
        "vocab_size": int(key("vocab_size", len(tokens) if tokens else 0)),
        "max_seq_length": int(key("context_length", 2048)),
        "d_model": d_model,
        "num_layers": int(key("block_count")),
        "num_heads": heads,
        "num_kv_heads": int(key("attention.head_count_kv", heads)),
        "d_ff": int(key("feed_forward_length")),
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation": "silu",
        "layer_norm_eps": float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        "bias": False,
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
        "ffn_bias": "blk.0.ffn_up.bias" in tensor_names,
        "tie_embeddings": "output.weight" not in tensor_names,
        "norm": "rmsnorm",
        "positional": "rope",
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "gated_ffn": True,
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": metadata.get("tokenizer.ggml.padding_token_id"),
    }


def hf_name(gguf_name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight`` (unknown names pass through)."""
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in GGUF_LAYER_NAMES:
        return f"model.layers.{parts[1]}.{GGUF_LAYER_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in GGUF_TOP_NAMES:
        return f"{GGUF_TOP_NAMES[parts[0]]}.{parts[1]}"
    return gguf_name


def read_gguf(
    path: str | os.PathLike, quantize: str | None = None, group_size: int | None = None, embeddings: str | None = None
) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """``(GPTConfig dict, glassformer tensors, metadata)`` of a Llama GGUF file: float32 tensors, or with
    ``quantize`` ("int8" / "int4") the matrices as ``<name>.quantized.{codes,scales,offsets}`` (module docstring);
    ``embeddings`` (None: as the file stores them, "float", "int8", "int4") for the token table and output layer."""
    from glassformer.checkpoints.huggingface import reading

    reader, metadata = open_gguf(path)
    with reading(path):
        return _read_gguf(reader, metadata, quantize, group_size, embeddings)


def _read_gguf(reader, metadata: dict, quantize=None, group_size=None, embeddings=None):
    from glassformer.checkpoints.huggingface import check_layer_count
    from glassformer.checkpoints.huggingface_llama import llama_state_dict_from_hf

    config = gguf_config(metadata, {t.name for t in reader.tensors})
    check_layer_count(config["num_layers"], reader.tensors, "the GGUF file")
    heads = {"attn_q": config["num_heads"], "attn_k": config["num_kv_heads"]}
    tensors = {}
    for tensor in reader.tensors:
        table = tensor.name.split(".")[0] in ("token_embd", "output")
        matrix = tensor.name.endswith(".weight") and len(tensor.shape) == 2
        target = (embeddings if table else quantize) if quantize is not None and matrix else None
        as_stored = quantize is not None and table and embeddings is None  # the table keeps the file's blocks
        rotated = heads.get(tensor.name.split(".")[-2]) if tensor.name.startswith("blk.") else None
        for name, value in _tensor(tensor, target, group_size, as_stored).items():
            if rotated is not None:  # rows of a matrix, or of its codes, scales and offsets
                value = unpermute_rotary(value.reshape(value.size(0), -1), rotated).reshape(value.shape)
            tensors[hf_name(tensor.name).removesuffix(".weight") + name] = value
    return config, llama_state_dict_from_hf(tensors, config["num_layers"]), metadata


def _tensor(tensor, target: str | None, group_size: int | None, as_stored: bool) -> dict[str, torch.Tensor]:
    """One GGUF tensor as ``{".weight": float32}`` or ``{".quantized.codes": ..., ...}`` for the ``target`` kind
    (``as_stored``: the kind its blocks map to, if any)."""
    from gguf.quants import dequantize

    from glassformer.nn.quantization import quantize_tensor

    direct = blocks_to_quantized(tensor)
    if direct is not None and (as_stored or (direct[0] == target and group_size in (None, 32))):
        kind, codes, scales, offsets = direct
    elif target is None or target == "float":
        # numpy's shape is GGUF's reversed: (out, in) for a matrix, as nn.Linear stores it
        return {".weight": torch.from_numpy(np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32))}
    else:
        weight = torch.from_numpy(np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32))
        codes, scales, offsets = quantize_tensor(weight, target, group_size)
    out = {".quantized.codes": codes, ".quantized.scales": scales}
    if offsets is not None:
        out[".quantized.offsets"] = offsets
    return out


def blocks_to_quantized(tensor) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """``(kind, codes, scales, offsets)`` of a Q8_0 / Q4_0 / Q4_1 matrix, copied out of its blocks (module
    docstring); None for any other type."""
    from gguf import GGMLQuantizationType as Type

    kind = {Type.Q8_0: "int8", Type.Q4_0: "int4", Type.Q4_1: "int4"}.get(tensor.tensor_type)
    if kind is None or tensor.data.ndim != 2:
        return None
    header = 4 if tensor.tensor_type == Type.Q4_1 else 2  # fp16 d (and m)
    rows = tensor.data.shape[0]
    blocks = np.asarray(tensor.data).reshape(rows, -1, header + (32 if kind == "int8" else 16))

    def half(column: int) -> torch.Tensor:
        values = np.ascontiguousarray(blocks[..., column : column + 2]).view(np.float16)[..., 0]
        return torch.from_numpy(values.copy())  # float16, as QuantizedWeight keeps them

    codes = np.ascontiguousarray(blocks[..., header:]).reshape(rows, -1)
    scales = half(0)
    if kind == "int8":
        return kind, torch.from_numpy(codes.view(np.int8)), scales, None
    offsets = half(2) if tensor.tensor_type == Type.Q4_1 else -8 * scales
    return kind, torch.from_numpy(codes), scales, offsets
