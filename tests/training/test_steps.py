"""Train steps and the losses pairwise objectives need (issue #9, deliverable 4).

The fused cross-entropy's ``ignore_index`` and the chunked per-token log-probabilities against
PyTorch's definitions; the two new step shapes on toy objectives: a two-player game (phases D then G,
each with its own optimizer, learning rate, clipping and checkpointed state) and a pairwise loss
against a frozen reference copy (DPO-shaped); metrics averaged over micro-steps, in metrics.jsonl.
"""
from __future__ import annotations

import json
import struct

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genmodels.training import RunConfig, train
from genmodels.training.checkpoint import load_checkpoint, save_checkpoint
from genmodels.objectives.losses import fused_linear_cross_entropy, token_logprobs
from genmodels.training.steps import FrozenReference, NonFiniteError, Phase, TrainStep

from .conftest import tiny_config

V, D = 37, 8


def _head(seed: int = 0, n: int = 23):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, D, generator=g, requires_grad=True)
    w = torch.randn(V, D, generator=g, requires_grad=True)
    b = torch.randn(V, generator=g, requires_grad=True)
    y = torch.randint(0, V, (n,), generator=g)
    y[::3] = -100  # every third target ignored
    return h, w, b, y


def _grads(loss, *ts):
    return torch.autograd.grad(loss, ts)


# ---- losses --------------------------------------------------------------------------------------
def test_fused_cross_entropy_ignores_targets_like_f_cross_entropy():
    h, w, b, y = _head()
    got = fused_linear_cross_entropy(h, w, b, y, chunk=5)
    ref = F.cross_entropy(F.linear(h, w, b), y, ignore_index=-100)
    assert torch.allclose(got, ref, atol=1e-6, rtol=0)
    for a, r in zip(_grads(got, h, w, b), _grads(ref, h, w, b)):
        assert torch.allclose(a, r, atol=1e-6, rtol=0)


def test_fused_cross_entropy_honours_a_custom_ignore_index():
    h, w, b, y = _head()
    y = torch.where(y == -100, torch.full_like(y, 3), y)  # id 3 now means "ignore"
    got = fused_linear_cross_entropy(h, w, b, y, chunk=4, ignore_index=3)
    assert torch.allclose(got, F.cross_entropy(F.linear(h, w, b), y, ignore_index=3), atol=1e-6, rtol=0)


def test_token_logprobs_equal_log_softmax_gather_with_gradients():
    h, w, b, y = _head(1)
    got = token_logprobs(h.view(1, -1, D), w, b, y.view(1, -1), chunk=4)  # (1, N)
    valid = y != -100
    ref = torch.log_softmax(F.linear(h, w, b), -1).gather(1, y.clamp(min=0)[:, None]).squeeze(1) * valid
    assert got.shape == (1, len(y)) and torch.allclose(got[0], ref, atol=1e-6, rtol=0)
    gw = torch.randn(len(y), generator=torch.Generator().manual_seed(2))  # a weighted sum, as DPO's
    for a, r in zip(_grads((got[0] * gw).sum(), h, w, b), _grads((ref * gw).sum(), h, w, b)):
        assert torch.allclose(a, r, atol=1e-5, rtol=0)


def test_token_logprobs_never_materialise_the_whole_logits(monkeypatch):
    import genmodels.objectives.losses as loss_mod
    rows = []
    real = loss_mod.F.linear

    def spy(x, *a):
        rows.append(x.shape[0])
        return real(x, *a)

    monkeypatch.setattr(loss_mod.F, "linear", spy)
    h, w, b, y = _head(n=40)
    token_logprobs(h, w, b, y, chunk=8).sum().backward()
    monkeypatch.setattr(loss_mod.F, "linear", real)
    assert rows and max(rows) <= 8


# ---- a two-player game: phases D then G ------------------------------------------------------------
class Critic(nn.Module):  # D: scores a point; real points high, generated points low
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -0.3]))


class Maker(nn.Module):  # G: one point it moves to fool D
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.tensor([1.0, 2.0]))


class DLoss(nn.Module):
    def __init__(self, d, g):
        super().__init__()
        self.d, self.g = d, g

    def forward(self, batch):
        real = batch["real"]  # (B, 2)
        fake = self.g.p.detach()[None]  # (1, 2)
        loss = F.softplus(-(real @ self.d.w)).mean() + F.softplus(fake @ self.d.w).mean()
        return loss, {"d_real": (real @ self.d.w).mean()}


class GLoss(nn.Module):
    def __init__(self, d, g):
        super().__init__()
        self.d, self.g = d, g

    def forward(self, batch):
        seen = self.d.w.detach().clone()
        return F.softplus(-(self.g.p @ self.d.w)), {"d_w0_seen": seen[0]}


def _game(opt=torch.optim.SGD, d_lr=0.1, g_lr=0.05, d_clip=None, g_clip=None):
    torch.manual_seed(0)
    d, g = Critic(), Maker()
    phases = [Phase("D", DLoss(d, g), d, opt(d.parameters(), lr=d_lr), d_clip, d_lr),
              Phase("G", GLoss(d, g), g, opt(g.parameters(), lr=g_lr), g_clip, g_lr)]
    return d, g, TrainStep(phases)


def _real(i: int, n: int = 2):
    g = torch.Generator().manual_seed(100 + i)
    return [{"real": torch.randn(4, 2, generator=g) + 3.0} for _ in range(n)]


def test_phases_run_in_order_each_updating_only_its_own_model():
    d, g, step = _game()
    d0, g0 = d.w.detach().clone(), g.p.detach().clone()
    rep = step(_real(0), 0)
    assert not torch.equal(d.w, d0) and not torch.equal(g.p, g0)
    assert rep.metrics["G/d_w0_seen"] == pytest.approx(float(d.w[0].detach()))  # G saw D after D's update
    assert set(rep.losses) == {"D", "G"}
    # D's optimizer holds D's parameters only, G's G's
    assert [p for grp in step.phases[0].optimizer.param_groups for p in grp["params"]] == [d.w]
    assert [p for grp in step.phases[1].optimizer.param_groups for p in grp["params"]] == [g.p]


def test_each_phase_has_its_own_learning_rate_and_clipping():
    d, g, step = _game(d_lr=0.1, g_lr=0.05, d_clip=1e-3, g_clip=None)
    d0, g0 = d.w.detach().clone(), g.p.detach().clone()
    step.set_lr(lambda ph: ph.lr * 0.5)  # a schedule at half its peak
    rep = step(_real(0), 0)
    assert [grp["lr"] for ph in step.phases for grp in ph.optimizer.param_groups] == [0.05, 0.025]
    assert rep.grad_norms["D"] > 1e-3  # measured before clipping…
    assert float((d.w.detach() - d0).norm()) == pytest.approx(0.05 * 1e-3, rel=1e-3)  # …and clipped to 1e-3
    assert float((g.p.detach() - g0).norm()) == pytest.approx(0.025 * rep.grad_norms["G"], rel=1e-4)  # G unclipped


def test_phase_optimizer_states_resume_exactly_from_a_checkpoint(tmp_path):
    d, g, step = _game(opt=torch.optim.Adam)
    for i in range(6):
        step(_real(i), i)
    ref = (d.w.detach().clone(), g.p.detach().clone())

    d, g, step = _game(opt=torch.optim.Adam)
    for i in range(3):
        step(_real(i), i)
    model_sd = {f"d.{k}": v for k, v in d.state_dict().items()} | {f"g.{k}": v for k, v in g.state_dict().items()}
    ck = save_checkpoint(tmp_path, 3, model_sd, step.optimizer_state(), {"cpu": torch.get_rng_state()},
                         {"step": 3}, keep_last=1)
    msd, osd, _, _ = load_checkpoint(ck)
    assert {gr["phase"] for gr in osd["param_groups"]} == {"D", "G"}

    d, g, step = _game(opt=torch.optim.Adam)
    d.load_state_dict({k[2:]: v for k, v in msd.items() if k.startswith("d.")})
    g.load_state_dict({k[2:]: v for k, v in msd.items() if k.startswith("g.")})
    step.load_optimizer_state(osd)
    for i in range(3, 6):
        step(_real(i), i)
    assert torch.equal(d.w, ref[0]) and torch.equal(g.p, ref[1])


def test_a_non_finite_phase_stops_before_its_update_naming_the_phase():
    d, g, step = _game()
    step.phases[1].loss_fn = lambda batch: (g.p.sum() * float("nan"), {})
    g0 = g.p.detach().clone()
    with pytest.raises(NonFiniteError) as e:
        step(_real(0), 4, where=lambda: "no checkpoint was written yet")
    assert str(e.value).startswith("step 5 (phase G): loss nan") and "\n" not in str(e.value)
    assert torch.equal(g.p, g0)  # G untouched


def test_metrics_and_loss_are_averaged_over_micro_steps():
    seen = []

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, batch):
            seen.append(float(batch["x"]))
            return self.w * batch["x"], {"x": batch["x"]}

    toy = Toy()
    step = TrainStep([Phase("model", toy, toy, torch.optim.SGD(toy.parameters(), lr=0.0))])
    rep = step([{"x": torch.tensor(v)} for v in (1.0, 2.0, 6.0)], 0)
    assert seen == [1.0, 2.0, 6.0]
    assert rep.losses["model"] == pytest.approx(3.0) and rep.metrics == {"x": pytest.approx(3.0)}


# ---- a pairwise loss against a frozen reference (DPO-shaped) ----------------------------------------
class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = nn.Embedding(V, D), nn.Linear(D, V)

    def logprob(self, ids):  # (B, T) -> (B,): log p(ids[:, 1:] | ids[:, :-1]) summed
        return token_logprobs(self.emb(ids[:, :-1]), self.head.weight, self.head.bias, ids[:, 1:], chunk=3).sum(-1)


class PairLoss(nn.Module):
    """−log σ(β((π_c − ref_c) − (π_r − ref_r))) (Rafailov et al., 2023, eq. 7)."""

    def __init__(self, policy, beta=0.5):
        super().__init__()
        self.model, self.beta = policy, beta
        self.reference = FrozenReference(policy)

    def forward(self, batch):
        c, r = self.model.logprob(batch["chosen"]), self.model.logprob(batch["rejected"])
        with torch.no_grad():
            rc, rr = self.reference.logprob(batch["chosen"]), self.reference.logprob(batch["rejected"])
        margin = self.beta * ((c - rc) - (r - rr))  # (B,)
        return -F.logsigmoid(margin).mean(), {"reward_acc": (margin > 0).float().mean()}


def _pairs(i):
    g = torch.Generator().manual_seed(i)
    return [{"chosen": torch.randint(0, V, (4, 6), generator=g), "rejected": torch.randint(0, V, (4, 6), generator=g)}]


def test_frozen_reference_is_outside_the_optimizer_and_the_checkpoint():
    obj = PairLoss(TinyLM())
    ref_params = list(obj.reference.model.parameters())
    assert all(not p.requires_grad for p in ref_params) and not obj.reference.model.training
    assert not any(p is q for p in obj.parameters() for q in ref_params)
    assert all(k.startswith("model.") for k in obj.state_dict())  # saved weights: the policy only
    opt = torch.optim.Adam(obj.parameters(), lr=0.05)
    before = [p.detach().clone() for p in ref_params]
    step = TrainStep([Phase("model", obj, obj, opt)])
    first = step(_pairs(0), 0)
    assert first.losses["model"] == pytest.approx(float(torch.log(torch.tensor(2.0))), abs=1e-6)  # policy = reference
    for i in range(1, 6):
        rep = step(_pairs(0), i)
    assert all(torch.equal(p, b) for p, b in zip(ref_params, before))  # the reference never moved
    assert rep.losses["model"] < first.losses["model"] and rep.metrics["reward_acc"] == 1.0


# ---- the trainer: an objective's metrics reach metrics.jsonl ----------------------------------------
def test_objective_metrics_are_logged_by_the_trainer(corpus_dir, tmp_path, monkeypatch):
    import genmodels.objectives as objectives
    real = objectives.build_objective

    def with_metric(*a, **kw):
        obj = real(*a, **kw)
        plain = type(obj).forward

        def forward(self, batch):
            return plain(self, batch)[0], {"seven": torch.tensor(7.0)}

        obj.__class__ = type(obj.__class__.__name__, (type(obj),), {"forward": forward})
        return obj

    monkeypatch.setattr(objectives, "build_objective", with_metric)
    run = tmp_path / "run"
    cfg = tiny_config(corpus_dir, run, train={"max_steps": 4, "eval_every": 2, "ckpt_every": 4},
                      sample={"max_new_tokens": 0})
    train(RunConfig.from_dict(cfg), progress=False, log=lambda s: None)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["seven"] for r in rows if "loss" in r] == [7.0] * 4
    width, height = struct.unpack(">II", (run / "loss.png").read_bytes()[16:24])
    assert (width, height) == (700, 700)  # a second panel for the objective's metrics (losses alone: 700×420)
