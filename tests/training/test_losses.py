import pytest
import torch
import torch.nn.functional as F

from glassformer.training.losses import (
    IGNORE_INDEX,
    fused_label_smoothed_cross_entropy,
    label_smoothed_cross_entropy,
)


def by_definition(logits, target, epsilon):
    """-Σ_v q_v log p_v with q = (1 - ε)·onehot(y) + ε/V, averaged over the non-ignored rows."""
    keep = target != IGNORE_INDEX
    logits, target = logits[keep], target[keep]
    vocab = logits.size(-1)
    q = torch.full_like(logits, epsilon / vocab)
    q[torch.arange(len(target)), target] += 1 - epsilon
    return -(q * logits.log_softmax(-1)).sum(-1).mean()


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.3])
def test_label_smoothing_matches_its_definition_and_torch(epsilon):
    logits = torch.randn(12, 7, dtype=torch.float64)
    target = torch.randint(0, 7, (12,))
    target[[2, 5]] = IGNORE_INDEX
    expected = by_definition(logits, target, epsilon)
    loss, count = label_smoothed_cross_entropy(logits, target, epsilon)
    assert count == 10
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    torch_loss = F.cross_entropy(logits, target, label_smoothing=epsilon, ignore_index=IGNORE_INDEX)
    assert loss.item() == pytest.approx(torch_loss.item(), rel=1e-6)


def test_fused_loss_equals_the_reference_in_value_and_gradient():
    logits = torch.randn(300, 50, requires_grad=True)
    target = torch.randint(0, 50, (300,))
    target[::4] = IGNORE_INDEX
    before = logits.detach().clone()
    ref, n_ref = label_smoothed_cross_entropy(logits, target, 0.1)
    fused, n_fused = fused_label_smoothed_cross_entropy(logits, target, 0.1, block_rows=64)
    assert n_ref == n_fused == 225
    torch.testing.assert_close(fused, ref)
    (grad_ref,) = torch.autograd.grad(ref * 3.0, logits)
    (grad_fused,) = torch.autograd.grad(fused * 3.0, logits)
    torch.testing.assert_close(grad_fused, grad_ref)
    assert torch.equal(logits.detach(), before)  # the input is not overwritten


def test_fused_loss_in_bfloat16_keeps_the_dtype_of_its_gradient():
    logits = torch.randn(40, 30).to(torch.bfloat16).requires_grad_()
    target = torch.randint(0, 30, (40,))
    loss, _ = fused_label_smoothed_cross_entropy(logits, target)
    loss.backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    ref, _ = label_smoothed_cross_entropy(logits.detach().float(), target)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("loss_fn", [label_smoothed_cross_entropy, fused_label_smoothed_cross_entropy])
def test_no_inf_or_nan_with_smoothing_padding_and_extreme_logits(loss_fn):
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [5.0, 5.0, 5.0]], requires_grad=True)
    target = torch.tensor([1, IGNORE_INDEX, 0])
    loss, count = loss_fn(logits, target, 0.1)
    loss.backward()
    assert count == 2 and torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    all_padding, count = loss_fn(logits, torch.full((3,), IGNORE_INDEX), 0.1)
    assert count == 0 and all_padding.item() == 0.0


def test_fused_loss_rejects_bad_shapes_and_epsilon():
    with pytest.raises(ValueError, match="flatten the batch"):
        fused_label_smoothed_cross_entropy(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="label smoothing must be in"):
        fused_label_smoothed_cross_entropy(torch.randn(2, 4), torch.zeros(2, dtype=torch.long), 1.0)
