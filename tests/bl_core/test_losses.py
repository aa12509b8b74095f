import pytest
import torch
import torch.nn.functional as F

from bl_core.errors import InputError
from bl_core.losses import distillation_loss


def _reference(s, t, ids, mask, T, lam, V):
    """Straightforward per-position loop over DESIGN §6."""
    kls, ces = [], []
    for b in range(ids.shape[0]):
        for i in range(ids.shape[1] - 1):
            if not (mask[b, i] and mask[b, i + 1]):
                continue
            zs, zt = s[b, i, :V].double(), t[b, i, :V].double()
            p_t = F.softmax(zt / T, -1)
            kls.append((p_t * (F.log_softmax(zt / T, -1) - F.log_softmax(zs / T, -1))).sum())
            ces.append(-F.log_softmax(zs, -1)[ids[b, i + 1]])
    kd = T**2 * torch.stack(kls).mean()
    ce = torch.stack(ces).mean()
    return lam * kd + (1 - lam) * ce, kd, ce


def test_matches_reference_with_padding_shift_and_vocab_cut():
    torch.manual_seed(0)
    s = torch.randn(2, 7, 12)  # student pads its vocabulary to 12
    t = torch.randn(2, 7, 16)  # teacher to 16; the tokenizer has 10
    ids = torch.randint(0, 10, (2, 7))
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]])
    out = distillation_loss(
        s, t, ids, mask, temperature=3.0, kd_weight=0.8, vocab_size=10, chunk_size=3
    )
    total, kd, ce = _reference(s, t, ids, mask, 3.0, 0.8, 10)
    assert out.num_positions == 4 + 4
    torch.testing.assert_close(out.total.double(), total, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.kd.double(), kd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.ce.double(), ce, rtol=1e-5, atol=1e-6)


def test_chunking_does_not_change_value_or_gradient():
    torch.manual_seed(0)
    ids = torch.randint(0, 20, (3, 9))
    t = torch.randn(3, 9, 20)
    grads = []
    for chunk in (1, 5, 10_000):
        s = torch.randn(3, 9, 20, generator=torch.Generator().manual_seed(1)).requires_grad_()
        loss = distillation_loss(s, t, ids, chunk_size=chunk).total
        loss.backward()
        grads.append((loss.detach(), s.grad))
    for loss, grad in grads[1:]:
        torch.testing.assert_close(loss, grads[0][0])
        torch.testing.assert_close(grad, grads[0][1])


def test_identical_logits_have_zero_kd_and_no_teacher_means_ce():
    torch.manual_seed(0)
    s = torch.randn(2, 5, 8)
    ids = torch.randint(0, 8, (2, 5))
    assert distillation_loss(s, s.clone(), ids).kd.abs().item() < 1e-6
    ce_only = distillation_loss(s, None, ids)
    expected = F.cross_entropy(s[:, :-1].reshape(-1, 8), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(ce_only.total, expected)


def test_nothing_counted_gives_zero_with_gradient_path():
    s = torch.randn(1, 4, 8, requires_grad=True)
    out = distillation_loss(
        s,
        torch.randn(1, 4, 8),
        torch.zeros(1, 4, dtype=torch.long),
        torch.zeros(1, 4, dtype=torch.long),
    )
    assert out.total.item() == 0.0 and out.num_positions == 0
    out.total.backward()
    assert s.grad is not None


def test_vocab_too_small_is_an_error_naming_the_side():
    with pytest.raises(InputError, match="teacher logits have 6"):
        distillation_loss(
            torch.randn(1, 3, 10),
            torch.randn(1, 3, 6),
            torch.zeros(1, 3, dtype=torch.long),
            vocab_size=8,
        )
