"""Label-smoothed cross-entropy, the paper's training loss (section 5.4, ε_ls = 0.1).

The target distribution puts 1 - ε on the true token and spreads ε uniformly over all V tokens:

    q_v = (1 - ε) · [v = y] + ε / V
    loss_i = -Σ_v q_v log p_v = (1 - ε) · (-log p_y) + ε · mean_v(-log p_v)
    loss = Σ_i loss_i / (number of non-padding targets)          positions with target == ignore_index skipped

(the same definition as ``torch.nn.functional.cross_entropy(..., label_smoothing=ε)``).

``label_smoothed_cross_entropy`` writes the formula out; ``fused_label_smoothed_cross_entropy`` computes the same
value and its gradient, ``(softmax(x) - q) / count``, in one pass over row blocks, without keeping the
``(tokens, vocab)`` log-probabilities and their float32 copies for the backward pass (``bench/kernels.py``
compares it with ``F.cross_entropy``).
"""

from __future__ import annotations

import torch

from glassformer.data.parallel import IGNORE_INDEX  # the label of padded target positions (-100, as in torch)


def label_smoothed_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, epsilon: float = 0.1, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, int]:
    """The reference: ``logits`` ``(tokens, vocab)``, ``target`` ``(tokens,)`` -> (mean loss, token count)."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    keep = target != ignore_index
    nll = -log_p.gather(-1, target.clamp(min=0)[:, None]).squeeze(-1)  # -log p_y
    smooth = -log_p.mean(dim=-1)  # mean_v(-log p_v)
    loss = ((1 - epsilon) * nll + epsilon * smooth)[keep]
    count = int(keep.sum())
    return (loss.sum() / max(count, 1)), count


class _FusedLabelSmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, epsilon, ignore_index, block_rows):
        tokens, vocab = logits.shape
        keep = target != ignore_index
        count = max(int(keep.sum()), 1)
        safe_target = target.clamp(min=0)
        grad = torch.empty_like(logits) if logits.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for start in range(0, tokens, block_rows):
            rows = slice(start, start + block_rows)
            x = logits[rows].to(torch.float32, copy=True)  # (rows, vocab); a copy: it is overwritten below
            lse = torch.logsumexp(x, dim=-1)  # log Σ_v exp(x_v)
            x_y = x.gather(-1, safe_target[rows, None]).squeeze(-1)
            # -log p_y = lse - x_y;  mean_v(-log p_v) = lse - mean_v(x_v)
            loss = (1 - epsilon) * (lse - x_y) + epsilon * (lse - x.mean(dim=-1))
            block_keep = keep[rows]
            total += (loss * block_keep).sum()
            if grad is not None:
                # d loss_i / d x_v = p_v - q_v, with p = softmax(x) = exp(x - lse)
                g = x.sub_(lse[:, None]).exp_().sub_(epsilon / vocab)
                g.scatter_add_(-1, safe_target[rows, None], torch.full_like(x_y[:, None], -(1 - epsilon)))
                g.mul_((block_keep / count)[:, None])
                grad[rows] = g
        ctx.save_for_backward(grad)
        return total / count

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None, None


def fused_label_smoothed_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    epsilon: float = 0.1,
    ignore_index: int = IGNORE_INDEX,
    block_rows: int = 64,
) -> tuple[torch.Tensor, int]:
    """Same value and gradient as ``label_smoothed_cross_entropy``, computed block by block.

    ``logits`` ``(tokens, vocab)`` in any float dtype (the gradient keeps it), ``target`` ``(tokens,)``.
    Returns (mean loss over non-ignored targets, their count).
    """
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            f"logits must be (tokens, vocab) and target (tokens,), got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}; flatten the batch and sequence dimensions first"
        )
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {epsilon}")
    count = int((target != ignore_index).sum())
    if logits.device.type != "cpu":  # a GPU takes the whole (tokens, vocab) block in one pass
        block_rows = max(block_rows, logits.size(0))
    return _FusedLabelSmoothedCrossEntropy.apply(logits, target, epsilon, ignore_index, block_rows), count
