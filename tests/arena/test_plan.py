"""The scale planner (genmodels.arena.plan, `genmodels plan`) against published and measured figures:
Llama 2 parameter counts equal transformers' LlamaForCausalLM; one MFU fitted on Llama 2 7B's reported
GPU-hours predicts 13B's and 70B's within 10%; weights, gradients, AdamW state and activations equal
(within 10%) what PyTorch holds in one training step of a model small enough to build here."""
from __future__ import annotations

import json

import pytest
import torch

import genmodels
from genmodels.arena.plan import fit_mfu, format_plan, layer_activations, plan
from genmodels.cli import main
from genmodels.objectives.causal import CausalLM
from genmodels.training.memory import apply_activation_checkpointing, transformer_blocks

# meta-llama/Llama-2-{7b,13b,70b}-hf config.json (the sizes that differ; vocab 32000, context 4096 for all)
HF_LLAMA2 = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32),
    "llama2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                       num_key_value_heads=40),
    "llama2-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                       num_key_value_heads=8),
}
# Touvron et al. (2023), "Llama 2", Table 2: pre-training GPU-hours on A100-80GB; 2.0T tokens, context 4096
GPU_HOURS = {"llama2-7b": 184_320, "llama2-13b": 368_640, "llama2-70b": 1_720_320}


def _plan(name: str, **kw):
    kw = {"gpus": 1, "seq": 4096, "batch": 1, **kw}
    return plan(genmodels.preset(name), name=name, **kw)


@pytest.mark.parametrize("name", list(HF_LLAMA2))
def test_llama2_parameters_equal_transformers(name):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=32000, max_position_embeddings=4096, **HF_LLAMA2[name])
    with torch.device("meta"):
        hf = LlamaForCausalLM(cfg)
    pl = _plan(name)
    assert pl.parameters == pl.active_parameters == sum(p.numel() for p in hf.parameters())


def _predicted_residuals(attention: bool) -> dict[str, float]:
    """Predicted / reported GPU-hours − 1 for each size, with the MFU fitted on 7B."""
    mfu = {n: fit_mfu(genmodels.preset(n), seq=4096, tokens=2e12, gpu_hours=h, gpu="a100", attention=attention)
           for n, h in GPU_HOURS.items()}
    return {n: mfu[n] / mfu["llama2-7b"] - 1 for n in GPU_HOURS}


def test_mfu_fitted_on_llama2_7b_predicts_13b_and_70b():
    mfu = fit_mfu(genmodels.preset("llama2-7b"), seq=4096, tokens=2e12, gpu_hours=GPU_HOURS["llama2-7b"])
    for name, reported in GPU_HOURS.items():
        predicted = _plan(name, gpus=2048, tokens=2e12, mfu=mfu, gpu="a100").gpu_hours
        assert abs(predicted / reported - 1) < 0.10, (name, predicted, reported)
    assert mfu == pytest.approx(0.4452, abs=1e-4)  # the figures docs/plan.md reports
    with_attention = _predicted_residuals(attention=True)
    assert with_attention["llama2-13b"] == pytest.approx(-0.054, abs=1e-3)
    assert with_attention["llama2-70b"] == pytest.approx(0.033, abs=1e-3)
    # 6N alone misses 70B by more than 10%: the attention term is what makes the prediction hold
    assert _predicted_residuals(attention=False)["llama2-70b"] == pytest.approx(0.114, abs=1e-3)


def _saved_bytes(obj, batch, params) -> int:
    """Bytes of the distinct storages autograd keeps for backward (parameters excluded)."""
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = obj(batch)
    return loss, sum(seen.values())


def _measure(name: str, batch: int, seq: int, checkpointing: bool = False, dtype=torch.float32) -> dict[str, int]:
    """One AdamW step (forward, backward, step) of preset ``name`` on CPU: the bytes PyTorch holds."""
    torch.manual_seed(0)
    model = genmodels.build_model(genmodels.preset(name)).to(dtype)
    if checkpointing:
        apply_activation_checkpointing(transformer_blocks(model), "full")
    obj = CausalLM(model).train()
    ids = torch.randint(0, model.config.vocab_size, (batch, seq + 1))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss, saved = _saved_bytes(obj, {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}, params)
    loss.backward()
    opt.step()
    state = [t for s in opt.state.values() for k, t in s.items() if k != "step"]  # step: a 4-byte counter
    return {"weights": sum(p.nbytes for p in model.parameters()),
            "gradients": sum(p.grad.nbytes for p in model.parameters()),
            "optimizer": sum(t.nbytes for t in state), "activations": saved}


@pytest.mark.parametrize("name", ["llama-tiny", "gpt2-tiny", "mixtral-tiny"])
def test_memory_within_10_percent_of_what_pytorch_holds(name):
    torch.set_num_threads(1)
    got = _measure(name, batch=2, seq=96)
    pl = _plan(name, seq=96, batch=2, precision="fp32")
    planned = {"weights": pl.weights, "gradients": pl.gradients, "optimizer": pl.optimizer,
               "activations": pl.activations.full}
    for k, v in planned.items():
        assert abs(v / got[k] - 1) < 0.10, (k, v, got[k])
    # the count follows the blocks term by term: in fp32 it is within 2% (a dropped term shows)
    assert abs(planned["activations"] / got["activations"] - 1) < 0.02


def test_checkpointed_activations_within_10_percent():
    """Full checkpointing keeps each block's input; the planner adds one layer recomputed in backward,
    which is not held after the forward pass (subtracted here)."""
    torch.set_num_threads(1)
    got = _measure("llama-tiny", batch=2, seq=96, checkpointing=True)["activations"]
    act = _plan("llama-tiny", seq=96, batch=2, precision="fp32").activations
    assert abs((act.with_checkpointing - act.recompute) / got - 1) < 0.10
    assert act.with_checkpointing < act.full


@pytest.mark.parametrize("name", ["llama-tiny", "gpt2-tiny"])
def test_bf16_activations_within_10_percent(name):
    """bf16 activations (model in bf16, RMSNorm's fp32 copy and fp32 statistics kept as planned)."""
    torch.set_num_threads(1)
    got = _measure(name, batch=1, seq=64, dtype=torch.bfloat16)["activations"]
    planned = _plan(name, seq=64, batch=1, precision="bf16").activations.full
    assert abs(planned / got - 1) < 0.10


def test_sharding_and_precision_conventions():
    fsdp, ddp = _plan("llama2-7b", gpus=8), _plan("llama2-7b", gpus=8, zero="ddp")
    n = fsdp.parameters
    assert (ddp.weights, ddp.gradients, ddp.optimizer) == (2 * n, 2 * n, 12 * n)  # ZeRO's 2 + 2 + 12 bytes
    assert (fsdp.weights, fsdp.gradients, fsdp.optimizer) == (2 * n // 8, 2 * n // 8, 12 * n // 8)
    assert fsdp.activations.full == ddp.activations.full  # activations are per device either way
    moe = _plan("mixtral-8x7b")
    assert moe.active_parameters < moe.parameters / 3  # 12.9B of 46.7B
    assert [t for t, _ in layer_activations(genmodels.preset("mixtral-8x7b"), 0, 2)][-1].startswith("moe:")


def test_cli_plan_prints_and_refuses(capsys):
    assert main(["plan", "llama2-70b", "--gpus", "64", "--seq", "4096", "--checkpointing", "--tokens", "2T"]) == 0
    out = capsys.readouterr().out
    assert "68,976,648,192" in out and "activations" in out and "GPU-hours" in out
    assert out.strip() == format_plan(_plan("llama2-70b", gpus=64, checkpointing=True, tokens=2e12))
    assert main(["plan", "mixtral-8x7b", "--gpus", "8", "--seq", "4096", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["parameters"] == 46_702_792_704 and d["active_parameters"] == 12_879_925_248
    for argv, words in [(["plan", "t5-small", "--gpus", "2"], "decoder"),
                        (["plan", "llama2-7b", "--gpus", "0"], "--gpus"),
                        (["plan", "llama2-7b", "--gpus", "1", "--seq", "9000"], "--seq"),
                        (["plan", "llama2-7b", "--gpus", "1", "--mfu", "2"], "--mfu")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        main(["plan", "llama2-7b", "--gpus", "1", "--tokens", "lots"])
    assert e.value.code == 2 and "--tokens" in capsys.readouterr().err


def test_gpt_layout_reproduces_korthikanti_34sbh():
    """Korthikanti et al. (2022), §4.1: a GPT layer (LayerNorm, 4h GELU MLP, dropout, 16-bit) keeps
    sbh(34 + 5as/h) bytes; with a flash kernel the 5as/h score term becomes the fp32 log-sum-exp (4 bytes
    per head per token), and the norms' fp32 statistics (16 bytes per token) are what the paper leaves out."""
    cfg = genmodels.preset("gpt2", dropout=0.1)
    per_token = sum(b for _, b in layer_activations(cfg, 0, 2))
    assert per_token == 34 * cfg.d_model + 4 * cfg.n_heads + 16
