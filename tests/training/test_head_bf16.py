"""The fused head loss under bf16 autocast (objectives/head_bf16.py, train.precision: bf16): the head cast to bf16
once per call (a frozen LoRA head too), ∂L/∂W accumulated in fp32 without scalar mixed-dtype adds, and the loss
and gradients those of fp32 to bf16's precision. Autocast on CPU runs on every CPU kind (emulated where the CPU
has no bf16), so these run everywhere."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from genmodels.objectives.head_bf16 import _accumulate
from genmodels.objectives.losses import fused_linear_cross_entropy

BF16 = torch.bfloat16


class Ops(TorchDispatchMode):
    """Records (op name, dtypes of the tensor arguments, shape of the first) of every op."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        ts = [a for a in args if isinstance(a, torch.Tensor)]
        self.seen.append((func.overloadpacket.__name__, tuple(t.dtype for t in ts), tuple(ts[0].shape) if ts else ()))
        return func(*args, **(kwargs or {}))


def _setup(n=37, d=16, v=50, bias=False):
    torch.manual_seed(0)
    h = torch.randn(n, d, requires_grad=True)
    w = (torch.randn(v, d) * 0.5).requires_grad_()
    b = torch.randn(v, requires_grad=True) if bias else None
    y = torch.randint(0, v, (n,))
    return h, w, b, y


def test_a_frozen_head_is_cast_to_bf16_once_per_call():
    """A head that is no leaf requiring grad (LoRA's frozen tied head) escapes autocast's cast cache: each
    product would cast the whole (V, D) table again, twice per chunk."""
    h, w, _, y = _setup()
    w.requires_grad_(False)
    with torch.autocast("cpu", dtype=BF16), Ops() as ops:
        fused_linear_cross_entropy(h, w, None, y, chunk=8)  # 5 chunks
    casts = [s for s in ops.seen if s[0] == "_to_copy" and s[2] == tuple(w.shape)]
    assert len(casts) == 1, casts


def test_the_weight_gradient_accumulates_in_fp32_without_mixed_dtype_adds():
    """fp32 += bf16 runs a scalar type-promoting loop (~9x slower than convert + add on SmolLM2's head)."""
    h, w, _, y = _setup()
    with torch.autocast("cpu", dtype=BF16):
        loss = fused_linear_cross_entropy(h, w, None, y, chunk=8)
    with Ops() as ops:
        loss.backward()
    with torch.autocast("cpu", dtype=BF16), Ops() as fwd:
        fused_linear_cross_entropy(h, w, None, y, chunk=8)
    mixed = [s for s in fwd.seen + ops.seen if s[0] in ("add", "add_") and len(set(s[1])) > 1 and s[2] == tuple(w.shape)]
    assert not mixed, mixed
    assert w.grad.dtype == torch.float32 and h.grad.dtype == torch.float32


def test_bf16_loss_and_gradients_are_fp32_s_to_bf16_precision():
    """Ignored rows, a bias, chunks that do not divide the rows: the same loss and gradients as F.cross_entropy in
    float64, to bf16's precision; without grad (evaluation) the same loss."""
    h, w, b, y = _setup(bias=True)
    y[[3, 20]] = -100
    ref = F.cross_entropy(F.linear(h.double(), w.double(), b.double()), y)
    want = torch.autograd.grad(ref, [h, w, b])
    with torch.autocast("cpu", dtype=BF16):
        loss = fused_linear_cross_entropy(h, w, b, y, chunk=8)
    got = torch.autograd.grad(loss, [h, w, b])
    assert abs(float(loss) - float(ref)) < 2e-2 * float(ref)
    for g, r in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), r.double(), rtol=0, atol=2e-2 * float(r.abs().max()))
    assert float(got[0][3].abs().max()) == 0.0  # an ignored row has no gradient
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        assert float(fused_linear_cross_entropy(h, w, b, y, chunk=8)) == float(loss)


def test_a_confident_target_keeps_its_small_gradient():
    """softmax − onehot at a target of probability ~1 is taken in fp32 before the cast: the gradient is the
    small true one, not bf16's rounding of 1 − p."""
    h, w, _, y = _setup(n=4)
    w.data.mul_(0.01)
    w.data[y] += 11 * h.data / h.data.pow(2).sum(1, keepdim=True)  # target logits ~11 above the rest: 1 − p_y ≈ 1e-3
    ref = torch.autograd.grad(F.cross_entropy(F.linear(h.double(), w.double()), y), [h])[0]
    with torch.autocast("cpu", dtype=BF16):
        got = torch.autograd.grad(fused_linear_cross_entropy(h, w, None, y, chunk=2), [h])[0]
    torch.testing.assert_close(got.double(), ref.double(), rtol=0, atol=0.1 * float(ref.abs().max()))  # (bf16 logits: ~4%)


def test_blockwise_accumulation_is_fp32_add_of_the_converted_block_bit_for_bit():
    torch.manual_seed(0)
    dst, src = torch.randn(11, 5), torch.randn(11, 5).to(BF16)
    want = dst + src.float()
    _accumulate(dst, src, first=False, rows=4)  # blocks of 4, 4, 3 rows
    assert torch.equal(dst, want)
    _accumulate(dst, src, first=True)
    assert torch.equal(dst, src.float())


# ---- the train step: one bf16 copy of each weight per optimizer step -------------------------------------------
def _micro_step(cast_once: bool):
    """A 3-micro-batch bf16 step on a 2-layer MLP: (the weights' bf16 casts counted, the gradients the
    optimizer saw). ``cast_once`` False: the reference — autocast around each micro-batch's forward alone."""
    from torch import nn

    from genmodels.training.steps import Phase, TrainStep
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))

    def loss_fn(batch):
        return net(batch["x"]).float().pow(2).mean(), {}
    batches = [{"x": torch.randn(5, 8)} for _ in range(3)]
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    grads = []
    opt.step = lambda: grads.append([p.grad.clone() for p in net.parameters()])
    with Ops() as ops:
        if cast_once:
            TrainStep([Phase("model", loss_fn, net, opt)], amp_dtype=BF16)(batches, 0)
        else:
            for b in batches:
                with torch.autocast("cpu", dtype=BF16):
                    loss = loss_fn(b)[0] / 3
                loss.backward()
            grads.append([p.grad.clone() for p in net.parameters()])
    casts = sum(1 for s in ops.seen if s[0] == "_to_copy" and s[1] == (torch.float32,) and s[2] == (16, 8))
    return casts, grads[0]


def test_a_bf16_step_casts_each_weight_once_for_all_its_micro_batches_same_gradients():
    casts, grads = _micro_step(cast_once=True)
    ref_casts, ref_grads = _micro_step(cast_once=False)
    assert ref_casts == 3 and casts == 1
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))  # the same bf16 weights: the same bits
