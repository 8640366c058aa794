"""The optimizers a run can train with: Adam, AdamW, or Muon for the blocks' matrices with AdamW for the rest.

    adam, adamw   one optimizer over every parameter; weight decay on matrices only
    muon          Muon (Jordan et al. 2024; ``torch.optim.Muon``) for the 2-D weights inside the Transformer blocks
                  — W_Q, W_K, W_V, W_O, W_1, W_2 — and AdamW for embeddings, the output layer, norms and biases:

                      B_t = μ B_{t-1} + g_t                 momentum (Nesterov: g_t + μ B_t is orthogonalized)
                      O_t = NewtonSchulz5(B_t) ≈ U Vᵀ       of B_t = U Σ Vᵀ: every singular value pushed to ~1
                      W_t = W_{t-1} (1 − η λ) − η · 0.2 · sqrt(max(A, B)) · O_t

                  with the update scaled as Moonshot's (``adjust_lr_fn="match_rms_adamw"``) so that its RMS is
                  AdamW's: one learning rate schedule serves both, ``muon_lr`` (default ``lr``) sets Muon's peak.

``OptimizerGroup`` steps the two as one: the loop sets each group's learning rate through ``param_groups``,
``trainer_state`` saves and restores both by parameter name.
"""

from __future__ import annotations

import torch
from torch import nn

from glassformer.nn.layers import DecoderLayer, EncoderLayer
from glassformer.training.config import TrainConfig


class OptimizerGroup:
    """Several optimizers over disjoint parameters, stepped together: ``param_groups`` is every optimizer's groups
    (the same dicts, so setting a group's ``lr`` reaches its optimizer), ``optimizers`` the optimizers themselves."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()


def block_matrices(model: nn.Module) -> set[int]:
    """The ids of the 2-D weights inside the model's encoder and decoder layers: what Muon trains."""
    return {
        id(p)
        for module in model.modules()
        if isinstance(module, EncoderLayer | DecoderLayer)
        for p in module.parameters()
        if p.dim() == 2
    }


def make_optimizer(
    model: nn.Module, config: TrainConfig, lr_scales: dict[str, float] | None = None, fused: bool = True
) -> torch.optim.Optimizer | OptimizerGroup:
    """``config.optimizer``'s optimizer: Adam or AdamW with weight decay on matrices only (rank >= 2), never on
    biases, norms or positions' vectors; or Muon + AdamW (module doc), an ``OptimizerGroup``.

    ``lr_scales`` (parameter name -> factor, default 1) gives parameters their own multiple of the scheduled
    learning rate (a group's ``lr_scale``), e.g. layer-wise decay when fine-tuning a pretrained encoder. ``fused``:
    one kernel for the whole Adam update (where ``runtime.fused_optimizer_works`` on the parameters' device)."""
    lr_scales = lr_scales or {}
    muon = block_matrices(model) if config.optimizer == "muon" else set()
    groups: dict[tuple[str, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            kind = "muon" if id(p) in muon else "decay" if p.dim() >= 2 else "no_decay"
            groups.setdefault((kind, lr_scales.get(name, 1.0)), []).append(p)
    order = {"muon": 0, "decay": 1, "no_decay": 2}
    ordered = sorted(groups.items(), key=lambda item: (order[item[0][0]], -item[0][1]))
    adam_groups = [
        {"params": params, "weight_decay": config.weight_decay if kind == "decay" else 0.0, "lr_scale": scale}
        for (kind, scale), params in ordered
        if kind != "muon"
    ]
    cls = torch.optim.AdamW if config.optimizer in ("adamw", "muon") else torch.optim.Adam
    adam = cls(adam_groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=fused)
    if not muon:
        return adam
    muon_scale = (config.muon_lr or config.lr) / config.lr
    muon_groups = [
        {"params": params, "lr_scale": scale * muon_scale} for (kind, scale), params in ordered if kind == "muon"
    ]
    matrices = torch.optim.Muon(
        muon_groups, lr=config.lr, weight_decay=config.weight_decay, momentum=config.muon_momentum,
        adjust_lr_fn="match_rms_adamw",
    )  # fmt: skip
    return OptimizerGroup(matrices, adam)
