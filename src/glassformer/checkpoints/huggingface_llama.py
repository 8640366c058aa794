"""Hugging Face Llama checkpoints (``LlamaForCausalLM``: Llama 2/3 shapes, SmolLM2, TinyLlama) in and out.

Llama names → glassformer names (``model.layers.{i}`` → ``layers.{i}``):

    model.embed_tokens                     embedding.embedding
    input_layernorm                        norm1                  (RMSNorm before the attention)
    self_attn.{q,k,v}_proj                 self_attn.qkv_proj     stacked row-wise [W_Q; W_K; W_V]
    self_attn.o_proj                       self_attn.out_proj
    post_attention_layernorm               norm3                  (RMSNorm before the feed-forward)
    mlp.{gate,up}_proj                     ffn.fc1                stacked row-wise [W_gate; W_up]
    mlp.down_proj                          ffn.fc2
    model.norm                             final_norm
    lm_head                                lm_head                (absent when tied to the embedding)

Both store ``nn.Linear`` weights ``(out, in)``: nothing is transposed. Rotary embeddings use the "rotate half"
pairing in both, so Q and K load as they are (GGUF files need a permutation undone: ``checkpoints.gguf``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from glassformer.checkpoints.huggingface import (
    check_exportable,
    check_layer_count,
    read_config,
    read_hf_weights,
    reading,
    resolve_model_dir,
    write_hf_directory,
)
from glassformer.checkpoints.native import tied_aliases

STACKED = {  # glassformer name in layers.{i} -> the Llama names stacked into it, in order
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "ffn.fc1": ("mlp.gate_proj", "mlp.up_proj"),
}
SINGLE = {  # glassformer name in layers.{i} -> Llama name
    "norm1.weight": "input_layernorm.weight",
    "self_attn.out_proj.weight": "self_attn.o_proj.weight",
    "self_attn.out_proj.bias": "self_attn.o_proj.bias",
    "norm3.weight": "post_attention_layernorm.weight",
    "ffn.fc2.weight": "mlp.down_proj.weight",
    "ffn.fc2.bias": "mlp.down_proj.bias",
}
TOP = {
    "embedding.embedding.weight": "model.embed_tokens.weight",
    "final_norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}


QUANTIZED_TOP = {"embedding": "model.embed_tokens", "lm_head": "lm_head"}  # module names (nn.quantization)
QUANTIZED_PARTS = ("quantized.codes", "quantized.scales", "quantized.offsets")


def _first(value):
    """Llama 3 configs list several end-of-sequence ids; glassformer stops at one (the first)."""
    return value[0] if isinstance(value, list) else value


def llama_config_from_hf(hf: dict) -> dict:
    """A Hugging Face Llama config → ``GPTConfig`` fields. Options glassformer's model lacks are refused."""
    if hf.get("model_type") != "llama":
        raise ValueError(f"expected a Llama checkpoint (model_type 'llama'), got model_type {hf.get('model_type')!r}")
    hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, hidden // heads):
        raise ValueError(
            f"head_dim={hf['head_dim']} differs from hidden_size / num_attention_heads = {hidden // heads}; "
            "glassformer's attention needs head_dim = d_model / num_heads"
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"Llama activation {hf['hidden_act']!r} is not supported; glassformer's SwiGLU uses 'silu'")
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ValueError(f"rope type {rope_type!r} (scaled rotary embeddings) is not supported; only 'default'")
    if hf.get("pretraining_tp", 1) != 1:
        raise ValueError("pretraining_tp != 1 is not supported; re-save the checkpoint with pretraining_tp=1")
    return {
        "model_type": "gpt",
        "vocab_size": hf["vocab_size"],
        "max_seq_length": hf.get("max_position_embeddings", 2048),
        "d_model": hidden,
        "num_layers": hf["num_hidden_layers"],
        "num_heads": heads,
        "num_kv_heads": hf.get("num_key_value_heads") or heads,
        "d_ff": hf["intermediate_size"],
        "dropout": 0.0,
        "attention_dropout": hf.get("attention_dropout", 0.0),
        "activation": "silu",
        "layer_norm_eps": hf.get("rms_norm_eps", 1e-6),
        "bias": False,
        "attention_bias": hf.get("attention_bias", False),
        "ffn_bias": hf.get("mlp_bias", False),
        "tie_embeddings": hf.get("tie_word_embeddings", False),
        "norm": "rmsnorm",
        "positional": "rope",
        "rope_theta": float(rope.get("rope_theta") or hf.get("rope_theta") or 10000.0),
        "gated_ffn": True,
        "bos_token_id": _first(hf.get("bos_token_id")),
        "eos_token_id": _first(hf.get("eos_token_id")),
        "pad_token_id": _first(hf.get("pad_token_id")),
    }


def llama_config_to_hf(config: dict) -> dict:
    """``GPTConfig`` fields of a Llama-style model → a Hugging Face ``LlamaConfig`` dict."""
    llama_style = (config["norm"], config["positional"], config["gated_ffn"], config["activation"])
    if llama_style != ("rmsnorm", "rope", True, "silu"):
        raise ValueError(
            "only a Llama-style GPT (rmsnorm, rope, gated silu feed-forward) can be saved as a Hugging Face Llama; "
            "save GPT-2-style models with format='hf' as GPT-2"
        )
    check_exportable(config, "Llama", {"silu": "silu"})
    attention_bias = config["bias"] if config["attention_bias"] is None else config["attention_bias"]
    ffn_bias = config["bias"] if config["ffn_bias"] is None else config["ffn_bias"]
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": config["vocab_size"],
        "max_position_embeddings": config["max_seq_length"],
        "hidden_size": config["d_model"],
        "intermediate_size": config["d_ff"],
        "num_hidden_layers": config["num_layers"],
        "num_attention_heads": config["num_heads"],
        "num_key_value_heads": config["num_kv_heads"] or config["num_heads"],
        "head_dim": config["d_model"] // config["num_heads"],
        "hidden_act": "silu",
        "rms_norm_eps": config["layer_norm_eps"],
        "rope_theta": config["rope_theta"],
        "rope_parameters": {"rope_type": "default", "rope_theta": config["rope_theta"]},
        "attention_bias": attention_bias,
        "attention_dropout": config["attention_dropout"],
        "mlp_bias": ffn_bias,
        "tie_word_embeddings": config["tie_embeddings"],
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
    }


def llama_state_dict_from_hf(tensors: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Llama tensors (``LlamaForCausalLM`` or bare ``LlamaModel`` names) → glassformer names."""
    tensors = dict(tensors)
    if not any(k.startswith("model.") for k in tensors):  # a bare LlamaModel
        tensors = {f"model.{k}": v for k, v in tensors.items()}
    ours = {mine: tensors.pop(theirs) for mine, theirs in TOP.items() if theirs in tensors}
    for mine, theirs in QUANTIZED_TOP.items():  # quantized tables (a GGUF file loaded quantized)
        for part in QUANTIZED_PARTS:
            if f"{theirs}.{part}" in tensors:
                ours[f"{mine}.{part}"] = tensors.pop(f"{theirs}.{part}")
    for i in range(num_layers):
        prefix = f"model.layers.{i}."
        for mine, parts in STACKED.items():
            for kind in ("weight", "bias", *QUANTIZED_PARTS):
                names = [f"{prefix}{part}.{kind}" for part in parts]
                if all(name in tensors for name in names):
                    ours[f"layers.{i}.{mine}.{kind}"] = torch.cat([tensors.pop(name) for name in names])
        for mine, theirs in SINGLE.items():
            if prefix + theirs in tensors:
                ours[f"layers.{i}.{mine}"] = tensors.pop(prefix + theirs)
            for part in QUANTIZED_PARTS if mine.endswith(".weight") else ():
                name = prefix + theirs.removesuffix("weight") + part
                if name in tensors:
                    ours[f"layers.{i}.{mine.removesuffix('weight')}{part}"] = tensors.pop(name)
    leftover = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}  # a buffer, not a weight
    ours.update(leftover)  # left for load_state_dict_checked to name as unexpected
    return ours


def llama_state_dict_to_hf(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """glassformer names → ``LlamaForCausalLM`` names, splitting the stacked matrices."""
    d, d_ff = config["d_model"], config["d_ff"]
    kv_dim = (config["num_kv_heads"] or config["num_heads"]) * (d // config["num_heads"])
    sizes = {"self_attn.qkv_proj": (d, kv_dim, kv_dim), "ffn.fc1": (d_ff, d_ff)}
    aliases = tied_aliases(state_dict)
    theirs = {hf: state_dict[mine] for mine, hf in TOP.items() if mine in state_dict and mine not in aliases}
    for i in range(config["num_layers"]):
        prefix = f"model.layers.{i}."
        for mine, parts in STACKED.items():
            for kind in ("weight", "bias"):
                name = f"layers.{i}.{mine}.{kind}"
                if name in state_dict:
                    for part, tensor in zip(parts, state_dict[name].split(sizes[mine]), strict=True):
                        theirs[f"{prefix}{part}.{kind}"] = tensor
        for mine, hf in SINGLE.items():
            if f"layers.{i}.{mine}" in state_dict:
                theirs[prefix + hf] = state_dict[f"layers.{i}.{mine}"]
    return theirs


def load_llama(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(GPTConfig dict, glassformer tensors)`` from a Hugging Face Llama directory."""
    directory = resolve_model_dir(path)
    config = read_config(directory)
    with reading(directory):
        ours, tensors = llama_config_from_hf(config), read_hf_weights(directory)
        check_layer_count(ours["num_layers"], tensors, directory)
        return ours, llama_state_dict_from_hf(tensors, ours["num_layers"])


def save_llama(directory: str | os.PathLike, config: dict, state_dict: dict[str, torch.Tensor]) -> Path:
    """Write a Hugging Face Llama directory (``LlamaForCausalLM``) from a Llama-style glassformer GPT."""
    hf_config = llama_config_to_hf(config)
    theirs = llama_state_dict_to_hf(state_dict, config)
    return write_hf_directory(directory, hf_config, theirs)
