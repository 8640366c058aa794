"""Hugging Face BERT and DistilBERT checkpoints ↔ glassformer's ``Bert`` names.

One table per layout maps a glassformer name to the Hugging Face one (``layers.{i}`` ↔ ``encoder.layer.{i}`` or
``transformer.layer.{i}``); both directions read the same table. Hugging Face keeps W_Q, W_K, W_V as three
matrices; glassformer stacks them into one ``qkv_proj`` (rows ``[W_Q; W_K; W_V]``), split again on the way out.
Older BERT checkpoints name LayerNorm parameters ``gamma`` / ``beta``; they are read as ``weight`` / ``bias``.

glassformer names returned by ``load_bert``: the encoder's (``embedding.embedding.weight``, ``layers.0...``) and,
for a classifier, ``classifier.weight`` / ``classifier.bias``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from glassformer.checkpoints.huggingface import (
    HF_ACTIVATIONS,
    check_exportable,
    check_layer_count,
    read_config,
    read_hf_weights,
    reading,
    resolve_model_dir,
    write_hf_directory,
)
from glassformer.checkpoints.native import read_checkpoint

LAYOUTS = {
    "bert": {
        "prefix": "bert.",  # of the encoder's names inside a BertForSequenceClassification
        "layer": "encoder.layer.{i}.",
        "qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
        "top": {
            "embedding.embedding": "embeddings.word_embeddings",
            "positions.embedding": "embeddings.position_embeddings",
            "segments": "embeddings.token_type_embeddings",
            "embedding_norm": "embeddings.LayerNorm",
            "pooler": "pooler.dense",
        },
        "per_layer": {
            "self_attn.out_proj": "attention.output.dense",
            "norm1": "attention.output.LayerNorm",
            "ffn.fc1": "intermediate.dense",
            "ffn.fc2": "output.dense",
            "norm2": "output.LayerNorm",
        },
        "head": {"classifier": "classifier"},
    },
    "distilbert": {
        "prefix": "distilbert.",
        "layer": "transformer.layer.{i}.",
        "qkv": ("attention.q_lin", "attention.k_lin", "attention.v_lin"),
        "top": {
            "embedding.embedding": "embeddings.word_embeddings",
            "positions.embedding": "embeddings.position_embeddings",
            "embedding_norm": "embeddings.LayerNorm",
        },
        "per_layer": {
            "self_attn.out_proj": "attention.out_lin",
            "norm1": "sa_layer_norm",
            "ffn.fc1": "ffn.lin1",
            "ffn.fc2": "ffn.lin2",
            "norm2": "output_layer_norm",
        },
        # DistilBERT's classifier: relu(pre_classifier(h_[CLS])), the pooler of a distilbert-flavoured Bert
        "head": {"pooler": "pre_classifier", "classifier": "classifier"},
    },
}


def module_names(flavor: str, num_layers: int, head: bool) -> dict[str, str]:
    """glassformer module name → Hugging Face module name (each with ``.weight`` / ``.bias``), without the
    fused attention projection."""
    layout = LAYOUTS[flavor]
    prefix = layout["prefix"] if head else ""
    names = {mine: prefix + theirs for mine, theirs in layout["top"].items()}
    for i in range(num_layers):
        layer = prefix + layout["layer"].format(i=i)
        names.update({f"layers.{i}.{mine}": layer + theirs for mine, theirs in layout["per_layer"].items()})
    if head:
        names.update(layout["head"])
    return names


# --- configs ----------------------------------------------------------------------------------------------


def bert_config_from_hf(hf: dict) -> dict:
    """A Hugging Face BERT or DistilBERT config → ``BertConfig`` fields. Unsupported options are refused."""
    kind = hf.get("model_type")
    labels = _labels(hf)
    if kind == "bert":
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"BERT position_embedding_type={hf['position_embedding_type']!r} is not supported; only 'absolute'"
            )
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            raise ValueError("a BERT decoder (is_decoder / add_cross_attention) is not supported; use GPT")
        fields = {
            "vocab_size": hf.get("vocab_size", 30522),
            "max_seq_length": hf.get("max_position_embeddings", 512),
            "d_model": hf.get("hidden_size", 768),
            "num_layers": hf.get("num_hidden_layers", 12),
            "num_heads": hf.get("num_attention_heads", 12),
            "d_ff": hf.get("intermediate_size", 3072),
            "dropout": hf.get("hidden_dropout_prob", 0.1),
            "attention_dropout": hf.get("attention_probs_dropout_prob", 0.1),
            "activation": _activation(hf.get("hidden_act", "gelu")),
            "layer_norm_eps": hf.get("layer_norm_eps", 1e-12),
            "type_vocab_size": hf.get("type_vocab_size", 2),
            "pooler_activation": "tanh",
            "classifier_dropout": hf.get("classifier_dropout"),
            "flavor": "bert",
        }
    elif kind == "distilbert":
        fields = {
            "vocab_size": hf.get("vocab_size", 30522),
            "max_seq_length": hf.get("max_position_embeddings", 512),
            "d_model": hf.get("dim", 768),
            "num_layers": hf.get("n_layers", 6),
            "num_heads": hf.get("n_heads", 12),
            "d_ff": hf.get("hidden_dim", 3072),
            "dropout": hf.get("dropout", 0.1),
            "attention_dropout": hf.get("attention_dropout", 0.1),
            "activation": _activation(hf.get("activation", "gelu")),
            "layer_norm_eps": 1e-12,
            "type_vocab_size": 0,
            "pooler_activation": "relu",
            "classifier_dropout": hf.get("seq_classif_dropout", 0.2),
            "flavor": "distilbert",
        }
    else:
        raise ValueError(
            f"expected a BERT or DistilBERT checkpoint (model_type 'bert' / 'distilbert'), got model_type {kind!r}; "
            "load a GPT-2 checkpoint with glassformer.GPT"
        )
    return {
        "model_type": "bert",
        **fields,
        "pad_token_id": hf.get("pad_token_id") or 0,
        "num_labels": len(hf.get("id2label") or {}) or hf.get("num_labels", 2),
        "labels": labels,
    }


def _activation(name: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported; known: {sorted(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def _labels(hf: dict) -> list[str] | None:
    id2label = hf.get("id2label")
    if not id2label:
        return None
    labels = [id2label[str(i)] if str(i) in id2label else id2label.get(i) for i in range(len(id2label))]
    return None if labels == [f"LABEL_{i}" for i in range(len(labels))] else labels


# --- loading ----------------------------------------------------------------------------------------------


def _normalize_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old BERT names (LayerNorm ``gamma`` / ``beta``) → current ones; drop the ``position_ids`` buffers."""
    out = {}
    for name, tensor in tensors.items():
        if name.endswith("position_ids"):
            continue
        if "LayerNorm" in name or "layer_norm" in name:
            name = name.removesuffix(".gamma") + ".weight" if name.endswith(".gamma") else name
            name = name.removesuffix(".beta") + ".bias" if name.endswith(".beta") else name
        out[name] = tensor
    return out


def bert_state_dict_from_hf(tensors: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Hugging Face tensors (bare model or sequence classifier) → glassformer ``Bert`` names plus the head."""
    flavor, num_layers = config["flavor"], config["num_layers"]
    layout = LAYOUTS[flavor]
    tensors = _normalize_names(tensors)
    head = any(k.startswith(layout["prefix"]) for k in tensors)
    ours: dict[str, torch.Tensor] = {}
    for mine, theirs in module_names(flavor, num_layers, head).items():
        for suffix in (".weight", ".bias"):
            if theirs + suffix in tensors:
                ours[mine + suffix] = tensors.pop(theirs + suffix)
    prefix = layout["prefix"] if head else ""
    for i in range(num_layers):
        layer = prefix + layout["layer"].format(i=i)
        for suffix in (".weight", ".bias"):
            parts = [layer + name + suffix for name in layout["qkv"]]
            if all(p in tensors for p in parts):
                ours[f"layers.{i}.self_attn.qkv_proj{suffix}"] = torch.cat([tensors.pop(p) for p in parts])
    ours.update(tensors)  # left for load_state_dict_checked to name as unexpected
    return ours


def load_bert(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(BertConfig dict, tensors in glassformer names)`` from a glassformer Bert / classifier checkpoint or a
    Hugging Face BERT / DistilBERT directory. The encoder's tensors come without the classifier's ``bert.``
    prefix; a classifier head, if any, as ``classifier.*``."""
    directory = resolve_model_dir(path)
    config = read_config(directory)
    if config.get("model_type") == "bert" and "glassformer_version" in config:
        config, tensors = read_checkpoint(directory)
        return config, {k.removeprefix("bert."): v for k, v in tensors.items()}
    with reading(directory):
        ours, weights = bert_config_from_hf(config), read_hf_weights(directory)
        check_layer_count(ours["num_layers"], weights, directory)
        tensors = bert_state_dict_from_hf(weights, ours)
    ours["pooler"] = "pooler.weight" in tensors  # transformers' add_pooling_layer is not in its config
    return ours, tensors


# --- saving -----------------------------------------------------------------------------------------------


def save_bert(directory: str | os.PathLike, config: dict, state_dict: dict[str, torch.Tensor], head: bool) -> Path:
    """Write a Hugging Face directory: ``BertModel`` / ``DistilBertModel`` (``head=False``) or the
    ``...ForSequenceClassification`` (``head=True``), from a glassformer config and state dict."""
    flavor = config["flavor"]
    if head:
        state_dict = {k.removeprefix("bert."): v for k, v in state_dict.items()}
    elif flavor == "distilbert" and config["pooler"]:
        raise ValueError("DistilBertModel has no pooler; save the classifier, or build the model with pooler=False")
    if flavor == "bert" and config["type_vocab_size"] == 0:
        raise ValueError("a BERT checkpoint needs segment embeddings (type_vocab_size >= 1)")
    theirs = {}
    for mine, hf_name in module_names(flavor, config["num_layers"], head).items():
        for suffix in (".weight", ".bias"):
            if mine + suffix in state_dict:
                theirs[hf_name + suffix] = state_dict[mine + suffix]
    layout = LAYOUTS[flavor]
    d = config["d_model"]
    for i in range(config["num_layers"]):
        layer = (layout["prefix"] if head else "") + layout["layer"].format(i=i)
        for suffix in (".weight", ".bias"):
            parts = state_dict[f"layers.{i}.self_attn.qkv_proj{suffix}"].split(d)  # W_Q, W_K, W_V
            for name, part in zip(layout["qkv"], parts, strict=True):
                theirs[layer + name + suffix] = part
    return write_hf_directory(directory, _hf_config(config, head), theirs)


def _hf_config(config: dict, head: bool) -> dict:
    activation = check_exportable(config, "BERT", {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"})
    labels = config["labels"] or [f"LABEL_{i}" for i in range(config["num_labels"])]
    common = {
        "vocab_size": config["vocab_size"],
        "max_position_embeddings": config["max_seq_length"],
        "pad_token_id": config["pad_token_id"],
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    if config["flavor"] == "distilbert":
        return {
            "model_type": "distilbert",
            "architectures": ["DistilBertForSequenceClassification" if head else "DistilBertModel"],
            **common,
            "dim": config["d_model"],
            "n_layers": config["num_layers"],
            "n_heads": config["num_heads"],
            "hidden_dim": config["d_ff"],
            "dropout": config["dropout"],
            "attention_dropout": config["attention_dropout"],
            "activation": activation,
            "seq_classif_dropout": config["classifier_dropout"] or config["dropout"],
            "sinusoidal_pos_embds": False,
        }
    return {
        "model_type": "bert",
        "architectures": ["BertForSequenceClassification" if head else "BertModel"],
        **common,
        "hidden_size": config["d_model"],
        "num_hidden_layers": config["num_layers"],
        "num_attention_heads": config["num_heads"],
        "intermediate_size": config["d_ff"],
        "hidden_act": activation,
        "hidden_dropout_prob": config["dropout"],
        "attention_probs_dropout_prob": config["attention_dropout"],
        "layer_norm_eps": config["layer_norm_eps"],
        "type_vocab_size": config["type_vocab_size"],
        "classifier_dropout": config["classifier_dropout"],
        "position_embedding_type": "absolute",
    }
