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


def _reference_autograd(s, t, ids, mask, T, lam, V):
    s64 = s.detach().double().requires_grad_()
    total, _, _ = _reference(s64, t, ids, mask, T, lam, V)
    total.backward()
    return s64.grad


@pytest.mark.parametrize("kd_weight", [0.0, 0.8, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_gradient_matches_autograd_reference(kd_weight, temperature):
    """The fused backward equals autograd through the plain per-position formula,
    including padding, the shift and logits wider than the vocabulary."""
    torch.manual_seed(0)
    s = torch.randn(2, 7, 12, requires_grad=True)
    t = torch.randn(2, 7, 16)
    ids = torch.randint(0, 10, (2, 7))
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]])
    out = distillation_loss(
        s, t, ids, mask, temperature=temperature, kd_weight=kd_weight, vocab_size=10, chunk_size=4
    )
    (2.5 * out.total).backward()  # the upstream gradient is applied, not assumed to be 1
    expected = 2.5 * _reference_autograd(s, t, ids, mask, temperature, kd_weight, 10)
    torch.testing.assert_close(s.grad.double(), expected, rtol=1e-5, atol=1e-7)
    assert s.grad[..., 10:].abs().sum() == 0  # vocabulary padding gets no gradient


def test_gradient_without_mask_and_without_teacher():
    torch.manual_seed(0)
    s = torch.randn(3, 6, 9, requires_grad=True)
    ids = torch.randint(0, 9, (3, 6))
    distillation_loss(s, None, ids, chunk_size=2).total.backward()
    ones = torch.ones(3, 6, dtype=torch.long)
    expected = _reference_autograd(s, torch.zeros(3, 6, 9), ids, ones, 1.0, 0.0, 9)
    torch.testing.assert_close(s.grad.double(), expected, rtol=1e-5, atol=1e-7)
    assert s.grad[:, -1].abs().sum() == 0  # the last position predicts nothing


def test_bfloat16_logits_get_a_bfloat16_gradient_computed_in_float32():
    torch.manual_seed(0)
    s32 = torch.randn(1, 5, 8)
    t = torch.randn(1, 5, 8, dtype=torch.bfloat16)
    ids = torch.randint(0, 8, (1, 5))
    s16 = s32.bfloat16().requires_grad_()
    out16 = distillation_loss(s16, t, ids)
    out16.total.backward()
    assert out16.total.dtype == torch.float32 and s16.grad.dtype == torch.bfloat16
    s_ref = s16.detach().float().requires_grad_()
    out32 = distillation_loss(s_ref, t.float(), ids)
    out32.total.backward()
    torch.testing.assert_close(out16.total, out32.total)
    torch.testing.assert_close(s16.grad.float(), s_ref.grad, rtol=2e-2, atol=1e-3)


def test_second_backward_is_refused():
    s = torch.randn(1, 4, 8, requires_grad=True)
    out = distillation_loss(s, torch.randn(1, 4, 8), torch.randint(0, 8, (1, 4)))
    out.total.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass per forward"):
        out.total.backward()


def test_bad_chunk_size_names_the_value():
    with pytest.raises(ValueError, match="chunk_size=0"):
        distillation_loss(
            torch.randn(1, 3, 4), None, torch.zeros(1, 3, dtype=torch.long), chunk_size=0
        )


def test_non_finite_logits_at_padded_positions_do_not_leak():
    """Padded positions are never read into the loss or its gradient, whatever they hold
    (fully masked attention rows can produce NaN in some attention implementations)."""
    torch.manual_seed(0)
    s = torch.randn(1, 6, 8)
    t = torch.randn(1, 6, 8)
    ids = torch.randint(0, 8, (1, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])  # left padding
    clean = distillation_loss(s, t, ids, mask).total
    s_bad = s.clone()
    s_bad[0, :2] = float("nan")
    s_bad[0, 1, 3] = float("inf")
    s_bad.requires_grad_()
    out = distillation_loss(s_bad, t, ids, mask)
    out.total.backward()
    torch.testing.assert_close(out.total, clean)
    assert torch.isfinite(s_bad.grad).all() and s_bad.grad[0, :2].abs().sum() == 0


# --- sparse top-k teacher outputs (DESIGN §6a) -------------------------------------------


def _sparse(teacher_logits: torch.Tensor, k: int, temperature: float, vocab: int):
    """What a store holds for these logits, in their own dtype (float64 stays exact)."""
    from bl_core.teacher_outputs import SparseLogits

    z = teacher_logits[:, :-1, :vocab]
    values, ids = z.topk(k, dim=-1)
    return SparseLogits(values, ids, torch.logsumexp(z / temperature, -1), temperature)


def test_topk_outputs_is_what_the_store_keeps():
    from bl_core.teacher_outputs import topk_outputs

    logits = torch.randn(2, 6, 12, generator=torch.Generator().manual_seed(2))
    values, ids, log_norm = topk_outputs(logits, 3, 2.0, 10)
    assert values.shape == ids.shape == (2, 5, 3) and log_norm.shape == (2, 5)
    assert ids.max() < 10  # only the shared vocabulary, never the padded entries
    torch.testing.assert_close(values, logits[:, :-1, :10].topk(3, -1).values)
    torch.testing.assert_close(log_norm, torch.logsumexp(logits[:, :-1, :10] / 2.0, -1))


def _reference_sparse_kd(student, teacher, k, temperature, vocab):
    """The partitioned KL with autograd in float64: k top teacher tokens + one tail bucket."""
    z_s = student[:, :-1, :vocab].double()
    z_t = teacher[:, :-1, :vocab].double()
    top = z_t.topk(k, dim=-1).indices
    in_top = torch.zeros_like(z_t, dtype=torch.bool).scatter_(-1, top, True)
    q = torch.softmax(z_t / temperature, -1)
    p = torch.softmax(z_s / temperature, -1)
    q_top, p_top = q.gather(-1, top), p.gather(-1, top)
    q_tail = (q * ~in_top).sum(-1)
    p_tail = (p * ~in_top).sum(-1)
    kl = (q_top * (q_top.log() - p_top.log())).sum(-1)
    kl = kl + torch.where(q_tail > 0, q_tail * (q_tail.log() - p_tail.log()), 0.0)
    return temperature**2 * kl.mean()


@pytest.mark.parametrize("k", [1, 5, 17])
def test_sparse_kd_matches_the_partitioned_reference_in_value_and_gradient(k):
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 9, 23, generator=gen, dtype=torch.float64) * 3
    teacher = torch.randn(2, 9, 23, generator=gen, dtype=torch.float64) * 3
    ids = torch.randint(0, 20, (2, 9), generator=gen)
    s1 = student.clone().requires_grad_(True)
    sparse = _sparse(teacher, k, 2.0, 20)
    parts = distillation_loss(s1, sparse, ids, temperature=2.0, kd_weight=1.0, vocab_size=20)
    parts.total.backward()
    s2 = student.clone().requires_grad_(True)
    reference = _reference_sparse_kd(s2, teacher, k, 2.0, 20)
    reference.backward()
    torch.testing.assert_close(parts.total, reference, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-9, atol=1e-12)
    assert s1.grad[..., 20:].abs().max() == 0  # padded vocabulary entries get no gradient


def test_sparse_kd_with_every_token_stored_equals_dense_kd():
    gen = torch.Generator().manual_seed(1)
    student = torch.randn(2, 7, 30, generator=gen)
    teacher = torch.randn(2, 7, 30, generator=gen)
    ids = torch.randint(0, 30, (2, 7), generator=gen)
    grads, values = [], []
    for t in (teacher, _sparse(teacher, 30, 3.0, 30)):
        s = student.clone().requires_grad_(True)
        parts = distillation_loss(s, t, ids, temperature=3.0, kd_weight=0.8)
        parts.total.backward()
        grads.append(s.grad)
        values.append(parts.total.detach())
    torch.testing.assert_close(values[0], values[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
