"""train.precision on CPU (training/precision.py): bf16 autocast where the CPU has bf16 hardware, refused
elsewhere in one line; auto stays fp32 and says when bf16 would be faster. The hardware probe is injected,
so every test runs the same on CPUs with and without AVX512-BF16 / AMX."""
from __future__ import annotations

import math

import pytest
import torch
import yaml

from genmodels.cli_train import main as train_main
from genmodels.config import ConfigError
from genmodels.training import RunConfig, train
from genmodels.training import precision

from .conftest import losses, tiny_config

CPU = torch.device("cpu")


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setattr(precision, "bf16_hardware", lambda flags=None: None)


@pytest.fixture
def has_bf16(monkeypatch):
    monkeypatch.setattr(precision, "bf16_hardware", lambda flags=None: "AVX512-BF16")


def test_the_probe_reads_the_cpu_flags(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n\nflags\t: other\n")
    assert precision.cpu_flags(str(f)) == {"fpu", "sse", "avx512f", "avx512_bf16", "avx512_vnni"}
    assert precision.cpu_flags(str(tmp_path / "absent")) == set()
    assert precision.bf16_hardware({"avx512f", "avx512_bf16"}) == "AVX512-BF16"
    assert precision.bf16_hardware({"avx512_bf16", "amx_bf16", "amx_tile"}) == "AMX"
    assert precision.bf16_hardware({"avx2", "fma"}) is None  # Zen 3


def test_bf16_is_refused_on_a_cpu_without_bf16_hardware(no_bf16):
    with pytest.raises(ConfigError) as e:
        precision.autocast_dtype("bf16", CPU)
    msg = str(e.value)
    assert "\n" not in msg and "train.precision=bf16" in msg and "AVX512-BF16 or AMX" in msg
    with pytest.raises(ConfigError, match="train.precision=fp16 needs a GPU"):
        precision.autocast_dtype("fp16", CPU)
    assert precision.autocast_dtype("auto", CPU) is None and precision.autocast_dtype("fp32", CPU) is None
    assert precision.precision_note("auto", CPU) is None  # nothing to say where bf16 would not pay


def test_cli_refuses_bf16_without_the_hardware(no_bf16, corpus_dir, tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(tiny_config(corpus_dir, tmp_path / "run", train={"precision": "bf16"})))
    assert train_main([str(f), "--set", "train.device=cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.precision=bf16") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_bf16_on_a_cpu_with_it_is_autocast(has_bf16):
    assert precision.autocast_dtype("bf16", CPU) is torch.bfloat16
    assert precision.autocast_dtype("auto", CPU) is None  # auto stays fp32 on CPU…
    note = precision.precision_note("auto", CPU)  # …and says that bf16 would be faster
    assert "train.precision=auto" in note and "AVX512-BF16" in note and "bf16" in note
    assert precision.precision_note("fp32", CPU) is None and precision.precision_note("bf16", CPU) is None


def test_a_bf16_run_trains_and_keeps_fp32_weights(has_bf16, corpus_dir, tmp_path):
    cfg = tiny_config(corpus_dir, tmp_path / "run", train={"precision": "bf16", "max_steps": 12, "eval_every": 12,
                                                           "ckpt_every": 12},
                      sample={"prompts": [], "max_new_tokens": 0})
    res = train(RunConfig.from_dict(cfg), progress=False, log=lambda s: None)
    got = losses(tmp_path / "run")
    assert len(got) == 12 and all(math.isfinite(v) for v in got.values())
    assert sum(list(got.values())[-3:]) < sum(list(got.values())[:3])  # it learns
    from safetensors.torch import load_file
    weights = load_file(str(res.final_dir / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}


def test_auto_says_once_and_computes_in_fp32(has_bf16, corpus_dir, tmp_path):
    """auto on a bf16 CPU: one note at the start, and the fp32 run's losses bit for bit."""
    said = []
    short = {"max_steps": 4, "eval_every": 4, "ckpt_every": 4}
    no_samples = {"prompts": [], "max_new_tokens": 0}
    train(RunConfig.from_dict(tiny_config(corpus_dir, tmp_path / "auto", train=short, sample=no_samples)),
          progress=False, log=said.append)
    train(RunConfig.from_dict(tiny_config(corpus_dir, tmp_path / "fp32", train={**short, "precision": "fp32"},
                                          sample=no_samples)), progress=False, log=lambda s: None)
    assert sum("train.precision=auto" in s for s in said) == 1
    assert losses(tmp_path / "auto") == losses(tmp_path / "fp32")


def test_the_fused_head_loss_runs_its_gradient_products_in_bf16_under_autocast():
    """Under bf16 autocast the chunked head loss's ∂L/∂h and ∂L/∂W products run in bf16 (mm with out= / addmm_
    would bypass autocast: fp32 at half the speed), agreeing with F.cross_entropy's autocast gradients."""
    import torch.nn.functional as F
    from torch.utils._python_dispatch import TorchDispatchMode

    from genmodels.objectives.losses import fused_linear_cross_entropy

    class MatmulDtypes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
                self.seen.append(args[-1].dtype)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    h, w = torch.randn(48, 32, requires_grad=True), torch.randn(100, 32, requires_grad=True)
    y = torch.randint(0, 100, (48,))
    with torch.autocast("cpu", dtype=torch.bfloat16), MatmulDtypes() as mode:
        loss = fused_linear_cross_entropy(h, w, None, y, chunk=16)
    assert mode.seen and set(mode.seen) == {torch.bfloat16}, mode.seen  # forward logits and both gradient products
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(h, w).float(), y)
    for got, want in zip(torch.autograd.grad(loss, [h, w]), torch.autograd.grad(ref, [h, w])):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))


def test_a_bf16_run_with_micro_batches_resumes_bit_for_bit(has_bf16, corpus_dir, tmp_path):
    """bf16 with grad_accum 2 (one bf16 cast of the weights per step, training/steps.py): resumed from step 2 of
    4, the losses and final weights equal the uninterrupted run's."""
    import shutil

    from safetensors.torch import load_file
    run = tmp_path / "run"
    cfg = tiny_config(corpus_dir, run, train={"precision": "bf16", "max_steps": 4, "eval_every": 4, "ckpt_every": 2,
                                              "grad_accum": 2, "keep_last": 5},
                      sample={"prompts": [], "max_new_tokens": 0})
    train(RunConfig.from_dict(cfg), progress=False, log=lambda s: None)
    again = tmp_path / "again"
    shutil.copytree(run, again, ignore=shutil.ignore_patterns("final", "step-000004"))
    cfg["run_dir"] = str(again)
    train(RunConfig.from_dict(cfg), resume=True, progress=False, log=lambda s: None)
    assert losses(again) == losses(run) and len(losses(run)) == 4
    a, b = load_file(run / "final" / "model.safetensors"), load_file(again / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
