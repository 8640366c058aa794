"""Input checks shared by the parts: each raises a one-line ``ValueError`` naming the problem and the fix,
before any computation runs."""

from __future__ import annotations

import torch


def check_token_ids(ids: torch.Tensor, vocab_size: int, max_seq_length: int | None, name: str = "input_ids") -> None:
    """Token ids must be an integer ``(batch, seq)`` tensor with values in ``[0, vocab_size)``.

    Inside a ``torch.compile``d model only the shape is checked: reading the values would split the graph, and a
    compiled model trains on batches of its own tokenizer's ids."""
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"{name} must hold integer token ids, got dtype {ids.dtype}; use tensor.long()")
    if ids.dim() != 2:
        raise ValueError(
            f"{name} must have shape (batch, seq), got {tuple(ids.shape)}; add a batch dimension with ids[None]"
        )
    if ids.size(1) == 0:
        raise ValueError(f"{name} is empty (sequence length 0); give at least one token")
    if ids.size(0) == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(ids.shape)}); give at least one sequence")
    if max_seq_length is not None and ids.size(1) > max_seq_length:
        raise ValueError(
            f"{name} has {ids.size(1)} positions but the model allows at most max_seq_length={max_seq_length}; "
            "truncate the input or build the model with a larger max_seq_length"
        )
    if ids.numel() > 0 and not torch.compiler.is_compiling():
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"{name} contains token id {bad}, outside the vocabulary [0, {vocab_size}); "
                "check the tokenizer matches the model"
            )


def check_hidden(x: torch.Tensor, d_model: int, name: str = "x") -> None:
    """Hidden states must be a floating ``(batch, seq, d_model)`` tensor."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating-point tensor, got {kind}")
    if x.dim() != 3 or x.size(-1) != d_model:
        raise ValueError(f"{name} must have shape (batch, seq, {d_model}), got {tuple(x.shape)}")


def check_mask(mask: torch.Tensor, target_shape: tuple[int, ...], name: str = "mask") -> None:
    """A mask must be boolean (True = may attend) and broadcast to ``target_shape``
    = ``(batch, heads, q_len, k_len)``."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        kind = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(
            f"{name} must be a bool tensor with True = may attend, got {kind}; build it with glassformer.masks"
        )
    check_broadcasts(mask, target_shape, name)


def check_bias(bias: torch.Tensor, target_shape: tuple[int, ...], name: str = "position_bias") -> None:
    """An additive attention bias must be floating and broadcast to ``target_shape`` = ``(batch, heads, q_len,
    k_len)``."""
    if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
        kind = bias.dtype if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ValueError(f"{name} must be a floating-point tensor added to the attention logits, got {kind}")
    check_broadcasts(bias, target_shape, name)


def check_broadcasts(tensor: torch.Tensor, target_shape: tuple[int, ...], name: str) -> None:
    """``tensor`` must broadcast to the attention scores' ``target_shape`` = ``(batch, heads, q_len, k_len)``."""
    ok = tensor.dim() <= len(target_shape) and all(
        m in (1, t) for m, t in zip(reversed(tensor.shape), reversed(target_shape), strict=False)
    )
    if not ok:
        raise ValueError(
            f"{name} of shape {tuple(tensor.shape)} does not broadcast to attention scores of shape "
            f"{tuple(target_shape)} (batch, heads, q_len, k_len)"
        )
