"""DPO (issue 23 d3): the losses and TRL's metrics against their definitions on constructed log-probabilities,
each loss's step-0 value with the reference equal to the policy, gradients reaching only the policy (a frozen copy
or the same model with its adapters off), one step raising the margin, options refused by name."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import genmodels.lora as lora
from genmodels.config import ConfigError
from genmodels.data import train_bpe_tokenizer
from genmodels.data.pairs import PackedPairs, read_pairs, tokenize_pairs
from genmodels.objectives import build_objective
from genmodels.objectives.dpo import DPOOptions, dpo_losses
from genmodels.registry import build_model, preset

PAIRS = Path(__file__).parent.parent / "fixtures" / "pairs" / "pairs.jsonl"


@pytest.fixture(scope="module")
def batch():
    tok = train_bpe_tokenizer([PAIRS.read_text()] * 4, 300)
    data = tokenize_pairs(read_pairs(PAIRS), tok, 0)
    packed = PackedPairs(data, range(len(data)), 160, 0)
    return packed.batch(range(len(packed)))


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(preset("llama-tiny").replace(vocab_size=300, d_model=32, n_layers=1, n_heads=2,
                                                    n_kv_heads=1, d_ff=64, head_dim=16))


def trl_reference(chosen, rejected, ref_c, ref_r, n_c, n_r, beta, loss, eps):
    """TRL 1.16 DPOTrainer._compute_loss's expressions, transcribed (f_divergence reverse_kl; the old sigmoid's
    label smoothing, TRL 1.16's `robust` without its 1/(1-2ε) rescaling, is cDPO)."""
    chosen_scores, rejected_scores = chosen - ref_c, rejected - ref_r
    delta_score = chosen_scores - rejected_scores
    if loss == "sigmoid":
        per = -F.logsigmoid(beta * delta_score) * (1 - eps) - F.logsigmoid(-beta * delta_score) * eps
    elif loss == "hinge":
        per = torch.relu(1 - beta * delta_score)
    else:
        ipo_delta = chosen_scores / n_c.clamp(min=1.0) - rejected_scores / n_r.clamp(min=1.0)
        per = (ipo_delta - 1 / (2 * beta)) ** 2
    cr, rr = beta * (chosen - ref_c), beta * (rejected - ref_r)
    return per.mean(), {"rewards/chosen": cr.mean(), "rewards/rejected": rr.mean(),
                        "rewards/accuracies": (cr > rr).float().mean(), "rewards/margins": (cr - rr).mean(),
                        "logps/chosen": chosen.mean(), "logps/rejected": rejected.mean()}


@pytest.mark.parametrize("loss, eps", [("sigmoid", 0.0), ("sigmoid", 0.2), ("hinge", 0.0), ("ipo", 0.0)])
def test_the_losses_and_metrics_equal_trls_formulas(loss, eps):
    g = torch.Generator().manual_seed(1)
    c, r, rc, rr = (-20 * torch.rand(7, generator=g, dtype=torch.float64) for _ in range(4))
    n_c, n_r = torch.randint(1, 9, (7,), generator=g).double(), torch.randint(1, 9, (7,), generator=g).double()
    per, metrics = dpo_losses(c, r, rc, rr, n_c, n_r, 0.3, loss, eps)
    want, want_metrics = trl_reference(c, r, rc, rr, n_c, n_r, 0.3, loss, eps)
    assert torch.allclose(per.mean(), want, rtol=1e-12, atol=0)
    assert metrics.keys() == want_metrics.keys()
    for k in metrics:
        assert torch.allclose(metrics[k].double(), want_metrics[k].double(), rtol=1e-12, atol=0), k


def test_hand_computed_sigmoid_value():
    """One pair: Δ = (−1 − −2) − (−3 − −3) = 1, β = 0.5: −log σ(0.5)."""
    per, m = dpo_losses(*(torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -3.0, 1.0, 1.0)), beta=0.5)
    assert per.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5))), rel=1e-6)
    assert m["rewards/margins"].item() == pytest.approx(0.5) and m["rewards/accuracies"].item() == 1.0


@pytest.mark.parametrize("loss", ["sigmoid", "hinge", "ipo"])
def test_rpo_adds_the_chosen_replys_per_token_nll(loss):
    """RPO (Pang et al. 2024): each pair's loss + α · (−log π(y_w) / |y_w|); α = 0 is plain DPO, no extra metric."""
    g = torch.Generator().manual_seed(2)
    c, r, rc, rr = (-20 * torch.rand(5, generator=g, dtype=torch.float64) for _ in range(4))
    n_c, n_r = torch.randint(1, 9, (5,), generator=g).double(), torch.randint(1, 9, (5,), generator=g).double()
    plain, m0 = dpo_losses(c, r, rc, rr, n_c, n_r, 0.3, loss)
    rpo, m1 = dpo_losses(c, r, rc, rr, n_c, n_r, 0.3, loss, rpo_alpha=0.7)
    assert torch.allclose(rpo, plain + 0.7 * (-c / n_c), rtol=1e-12, atol=0)
    assert "nll_loss" not in m0 and m1["nll_loss"].item() == pytest.approx((-c / n_c).mean().item(), rel=1e-12)


def test_rpo_step0_value_and_it_raises_the_chosen_likelihood(batch):
    """Identical policies: ln 2 + α · NLL; an SGD step on RPO raises logps/chosen where plain DPO's step
    moves it less."""
    dpo = build_objective("dpo", tiny(), DPOOptions(rpo_alpha=1.0), loss_chunk=64)
    value, metrics = dpo(batch)
    assert value.item() == pytest.approx(math.log(2) + metrics["nll_loss"].item(), rel=1e-6)
    assert DPOOptions.from_dict({"name": "dpo", "rpo_alpha": 0.5}, "train.objective").rpo_alpha == 0.5
    gains = []
    for alpha in (0.0, 1.0):
        obj = build_objective("dpo", tiny(), DPOOptions(rpo_alpha=alpha), loss_chunk=64)
        before = obj(batch)[1]["logps/chosen"].item()
        opt, _ = _step(obj, batch)
        opt.step()
        gains.append(obj(batch)[1]["logps/chosen"].item() - before)
    assert gains[1] > max(gains[0], 0.0)


@pytest.mark.parametrize("loss, beta, want", [("sigmoid", 0.1, math.log(2)), ("hinge", 0.1, 1.0),
                                              ("ipo", 0.1, 25.0), ("ipo", 0.5, 1.0)])
def test_with_the_reference_equal_to_the_policy_each_loss_takes_its_step0_value(batch, loss, beta, want):
    dpo = build_objective("dpo", tiny(), DPOOptions(beta=beta, loss=loss), loss_chunk=64)
    value, metrics = dpo(batch)
    assert value.item() == pytest.approx(want, rel=1e-6)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert metrics[k].item() == 0.0


def _step(dpo, batch):
    opt = torch.optim.SGD([p for p in dpo.parameters() if p.requires_grad], lr=0.5)
    loss, _ = dpo(batch)
    loss.backward()
    return opt, loss


def test_gradients_reach_only_the_policy_and_a_step_raises_the_margin(batch):
    dpo = build_objective("dpo", tiny(), DPOOptions(), loss_chunk=64)
    ref = dpo.reference.model
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    assert not any(n.startswith("reference") for n, _ in dpo.named_parameters())  # not a submodule
    opt, _ = _step(dpo, batch)
    assert all(p.grad is None for p in ref.parameters())
    assert all(p.grad is not None for p in dpo.model.parameters())
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items())
    _, after = dpo(batch)
    assert after["rewards/margins"].item() > 0


def test_the_adapters_off_reference_is_the_base_and_only_adapters_learn(batch):
    model = tiny()
    base = tiny()
    lora.apply(model, "q,v", r=4)
    dpo = build_objective("dpo", model, DPOOptions(reference="adapters_off"), loss_chunk=64)
    assert dpo.reference is None  # no second copy
    assert dpo(batch)[0].item() == pytest.approx(math.log(2), rel=1e-6)  # B = 0: the policy is the base
    with torch.no_grad():
        for _, p in lora.trainable_parameters(model):
            p.add_(0.05 * torch.randn_like(p))
    ref_c, ref_r = dpo.reference_logps(batch)
    plain = build_objective("dpo", base, DPOOptions(), loss_chunk=64)
    want_c, want_r = plain.reference_logps(batch)
    assert torch.allclose(ref_c, want_c, atol=1e-5) and torch.allclose(ref_r, want_r, atol=1e-5)
    _step(dpo, batch)
    for name, p in model.named_parameters():
        assert (p.grad is not None) == ("lora_" in name), name


@pytest.mark.parametrize("opts, says", [
    ({"beta": 0.0}, "train.objective.beta"),
    ({"loss": "kto"}, "train.objective.loss='kto' is not allowed"),
    ({"label_smoothing": 0.5}, "train.objective.label_smoothing"),
    ({"loss": "ipo", "label_smoothing": 0.1}, "means nothing with train.objective.loss=ipo"),
    ({"reference": "copy"}, "train.objective.reference='copy' is not allowed"),
    ({"rpo_alpha": -0.1}, "train.objective.rpo_alpha"),
])
def test_bad_options_are_refused_by_name(opts, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(".", r"\.")):
        DPOOptions.from_dict({"name": "dpo", **opts}, "train.objective")


def test_adapters_off_without_adapters_is_refused():
    with pytest.raises(ConfigError, match="reference=adapters_off needs LoRA adapters"):
        build_objective("dpo", tiny(), DPOOptions(reference="adapters_off"))


@pytest.mark.parametrize("objective", ["dpo", "reward"])
def test_a_model_without_the_pairs_masks_is_refused_by_name(objective):
    """RetNet keeps no allowed pairs or segments: one ConfigError naming train.objective, before any work."""
    from genmodels.objectives import objective_for
    with pytest.raises(ConfigError, match=f"train.objective='{objective}' does not fit model.family='retnet': "
                                          "it needs the 'segments' mask rule"):
        objective_for("retnet", objective)
    assert objective_for("decoder", objective) == objective
