"""Hugging Face T5 checkpoints (``T5ForConditionalGeneration``: T5 v1.0, v1.1, Flan-T5) in and out.

T5 names → glassformer names (the seq2seq ``Transformer`` configured by ``TransformerConfig.t5``):

    shared                                               encoder.embedding.embedding (the decoder shares it)
    {stack}.block.0.layer.0.SelfAttention.relative_attention_bias   {stack}.relative_bias.embedding
    {stack}.block.{i}.layer.0.SelfAttention.{q,k,v}      {stack}.layers.{i}.self_attn.qkv_proj   stacked [W_Q; W_K; W_V]
    {stack}.block.{i}.layer.0.SelfAttention.o            {stack}.layers.{i}.self_attn.out_proj
    {stack}.block.{i}.layer.0.layer_norm                 {stack}.layers.{i}.norm1
    decoder.block.{i}.layer.1.EncDecAttention.{q,k,v,o}  decoder.layers.{i}.cross_attn.{qkv_proj, out_proj}
    decoder.block.{i}.layer.1.layer_norm                 decoder.layers.{i}.norm2
    {stack}.block.{i}.layer.{f}.DenseReluDense.wi        {stack}.layers.{i}.ffn.fc1   (v1.0: ReLU)
    {stack}.block.{i}.layer.{f}.DenseReluDense.wi_{0,1}  {stack}.layers.{i}.ffn.fc1   stacked [W_gate; W_up] (v1.1)
    {stack}.block.{i}.layer.{f}.DenseReluDense.wo        {stack}.layers.{i}.ffn.fc2
    {stack}.block.{i}.layer.{f}.layer_norm               encoder: norm2, decoder: norm3   (f = 1 encoder, 2 decoder)
    {stack}.final_layer_norm                             {stack}.final_norm
    lm_head                                              output_projection (absent when tied to ``shared``)

Both store ``nn.Linear`` weights ``(out, in)``: nothing is transposed.
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

# feed_forward_proj's activation (after "gated-") -> glassformer's activation name; T5's "gated-gelu" is GELU-tanh
T5_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "silu": "silu"}
ACTIVATION_NAMES = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu"}


def _attention(stack: str, i: int, sublayer: int, kind: str) -> str:
    return f"{stack}.block.{i}.layer.{sublayer}.{kind}"


def layer_names(stack: str, i: int, gated: bool) -> dict[str, tuple[str, ...]]:
    """glassformer name in ``{stack}.layers.{i}`` -> the T5 names stored (stacked, in order) into it."""
    ffn = 1 if stack == "encoder" else 2
    names = {
        "self_attn.qkv_proj.weight": tuple(_attention(stack, i, 0, f"SelfAttention.{p}.weight") for p in "qkv"),
        "self_attn.out_proj.weight": (_attention(stack, i, 0, "SelfAttention.o.weight"),),
        "norm1.weight": (_attention(stack, i, 0, "layer_norm.weight"),),
        "ffn.fc1.weight": tuple(
            _attention(stack, i, ffn, f"DenseReluDense.{w}.weight") for w in (("wi_0", "wi_1") if gated else ("wi",))
        ),
        "ffn.fc2.weight": (_attention(stack, i, ffn, "DenseReluDense.wo.weight"),),
        f"norm{ffn + 1}.weight": (_attention(stack, i, ffn, "layer_norm.weight"),),
    }
    if stack == "decoder":
        names["cross_attn.qkv_proj.weight"] = tuple(
            _attention(stack, i, 1, f"EncDecAttention.{p}.weight") for p in "qkv"
        )
        names["cross_attn.out_proj.weight"] = (_attention(stack, i, 1, "EncDecAttention.o.weight"),)
        names["norm2.weight"] = (_attention(stack, i, 1, "layer_norm.weight"),)
    return names


def t5_config_from_hf(hf: dict, tied: bool = True) -> dict:
    """A Hugging Face T5 config → ``TransformerConfig`` fields; ``tied``: the weights hold no separate ``lm_head``.

    Whether the decoder's output is scaled by d_model^-0.5 before the output layer: ``scale_decoder_outputs``
    (transformers 5, which always ties the output to ``shared``), else ``tie_word_embeddings`` (T5 v1.0 True, v1.1
    False)."""
    if hf.get("model_type") != "t5":
        raise ValueError(f"expected a T5 checkpoint (model_type 't5'), got model_type {hf.get('model_type')!r}")
    projection = hf.get("feed_forward_proj", "relu")
    gated = projection.startswith("gated-")
    activation = projection.removeprefix("gated-")
    activation = "gelu_new" if gated and activation == "gelu" else activation  # transformers' reading of T5 v1.1
    if activation not in T5_ACTIVATIONS:
        raise ValueError(f"T5 feed_forward_proj {projection!r} is not supported; known: relu, gated-gelu, gated-silu")
    scaled = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
    pad = hf.get("pad_token_id", 0)
    return {
        "model_type": "transformer",
        "src_vocab_size": hf["vocab_size"],
        "tgt_vocab_size": hf["vocab_size"],
        "d_model": hf["d_model"],
        "head_dim": hf["d_kv"],
        "d_ff": hf["d_ff"],
        "num_layers": hf["num_layers"],
        "num_decoder_layers": hf.get("num_decoder_layers") or hf["num_layers"],
        "num_heads": hf["num_heads"],
        "max_seq_length": hf.get("n_positions", 512),
        "dropout": hf.get("dropout_rate", 0.1),
        "layer_norm_eps": hf.get("layer_norm_epsilon", 1e-6),
        "activation": T5_ACTIVATIONS[activation],
        "gated_ffn": gated,
        "relative_buckets": hf.get("relative_attention_num_buckets", 32),
        "relative_max_distance": hf.get("relative_attention_max_distance", 128),
        "norm": "rmsnorm",
        "norm_first": True,
        "positional": "relative",
        "attention_scale": 1.0,
        "bias": False,
        "share_embeddings": True,
        "tie_output": tied,
        "scale_output": scaled,
        "scale_embeddings": False,
        "pad_token_id": pad,
        "bos_token_id": hf.get("decoder_start_token_id", pad),
        "eos_token_id": hf.get("eos_token_id", 1),
    }


def t5_config_to_hf(config: dict) -> dict:
    """``TransformerConfig`` fields of a T5-style model → a Hugging Face ``T5Config`` dict."""
    t5_style = (
        config["positional"] == "relative" and config["norm"] == "rmsnorm" and config["norm_first"]
        and not config["bias"] and config["attention_scale"] == 1.0 and config["share_embeddings"]
        and not config["scale_embeddings"] and config["final_norm"] in (None, True)
        and config["num_kv_heads"] in (None, config["num_heads"])
        and config["attention_bias"] in (None, False) and config["ffn_bias"] in (None, False)
    )  # fmt: skip
    if not t5_style:
        raise ValueError(
            "only a T5-style Transformer (TransformerConfig.t5: relative positions, pre-norm RMSNorm, no biases, "
            "unscaled logits and shared embeddings) can be saved as a Hugging Face T5"
        )
    activation = check_exportable(config, "T5", ACTIVATION_NAMES)
    if config["gated_ffn"]:
        projection = "gated-gelu" if activation == "gelu_new" else f"gated-{activation}"
    elif activation == "relu":
        projection = "relu"
    else:
        raise ValueError(f"a T5 feed-forward without a gate uses ReLU, not {config['activation']!r}")
    head_dim = config["head_dim"] or config["d_model"] // config["num_heads"]
    return {
        "model_type": "t5",
        "architectures": ["T5ForConditionalGeneration"],
        "is_encoder_decoder": True,
        "vocab_size": config["tgt_vocab_size"],
        "d_model": config["d_model"],
        "d_kv": head_dim,
        "d_ff": config["d_ff"],
        "num_layers": config["num_layers"],
        "num_decoder_layers": config["num_decoder_layers"] or config["num_layers"],
        "num_heads": config["num_heads"],
        "relative_attention_num_buckets": config["relative_buckets"],
        "relative_attention_max_distance": config["relative_max_distance"],
        "dropout_rate": config["dropout"],
        "layer_norm_epsilon": config["layer_norm_eps"],
        "feed_forward_proj": projection,
        "tie_word_embeddings": config["scale_output"],  # what T5 v1.0 / v1.1 configs say (the scaling)
        "scale_decoder_outputs": config["scale_output"],
        "pad_token_id": config["pad_token_id"],
        "eos_token_id": config["eos_token_id"],
        "decoder_start_token_id": config["bos_token_id"],
    }


def _layers(config: dict, stack: str) -> int:
    return config["num_layers"] if stack == "encoder" else config["num_decoder_layers"] or config["num_layers"]


def t5_state_dict_from_hf(tensors: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """T5 tensors → glassformer names (unknown names are left for ``load_state_dict_checked`` to report)."""
    tensors = dict(tensors)
    shared = tensors.pop("shared.weight", None)
    for alias in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        embedding = tensors.pop(alias, None)
        shared = embedding if shared is None else shared
    ours = {} if shared is None else {"encoder.embedding.embedding.weight": shared}
    if "lm_head.weight" in tensors:
        lm_head = tensors.pop("lm_head.weight")
        if not config["tie_output"]:
            ours["output_projection.weight"] = lm_head
    for stack in ("encoder", "decoder"):
        bias = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        if bias in tensors:
            ours[f"{stack}.relative_bias.embedding.weight"] = tensors.pop(bias)
        if f"{stack}.final_layer_norm.weight" in tensors:
            ours[f"{stack}.final_norm.weight"] = tensors.pop(f"{stack}.final_layer_norm.weight")
        for i in range(_layers(config, stack)):
            for mine, theirs in layer_names(stack, i, config["gated_ffn"]).items():
                if all(name in tensors for name in theirs):
                    ours[f"{stack}.layers.{i}.{mine}"] = torch.cat([tensors.pop(name) for name in theirs])
    ours.update(tensors)
    return ours


def t5_state_dict_to_hf(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """glassformer names → ``T5ForConditionalGeneration`` names, splitting the stacked matrices."""
    aliases = tied_aliases(state_dict)
    theirs = {"shared.weight": state_dict["encoder.embedding.embedding.weight"]}
    if "output_projection.weight" not in aliases:
        theirs["lm_head.weight"] = state_dict["output_projection.weight"]
    for stack in ("encoder", "decoder"):
        theirs[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = state_dict[
            f"{stack}.relative_bias.embedding.weight"
        ]
        theirs[f"{stack}.final_layer_norm.weight"] = state_dict[f"{stack}.final_norm.weight"]
        for i in range(_layers(config, stack)):
            for mine, names in layer_names(stack, i, config["gated_ffn"]).items():
                tensor = state_dict[f"{stack}.layers.{i}.{mine}"]
                for name, part in zip(names, tensor.chunk(len(names)), strict=True):
                    theirs[name] = part
    return theirs


def load_t5(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(TransformerConfig dict, glassformer tensors)`` from a Hugging Face T5 directory."""
    directory = resolve_model_dir(path)
    tensors, config = read_hf_weights(directory), read_config(directory)
    with reading(directory):
        ours = t5_config_from_hf(config, tied="lm_head.weight" not in tensors)
        check_layer_count(max(ours["num_layers"], ours.get("num_decoder_layers") or 0), tensors, directory)
        return ours, t5_state_dict_from_hf(tensors, ours)


def save_t5(directory: str | os.PathLike, config: dict, state_dict: dict[str, torch.Tensor]) -> Path:
    """Write a Hugging Face T5 directory (``T5ForConditionalGeneration``) from a T5-style glassformer Transformer."""
    hf_config = t5_config_to_hf(config)
    theirs = t5_state_dict_to_hf(state_dict, config)
    return write_hf_directory(directory, hf_config, theirs)
