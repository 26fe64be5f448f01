"""genmodels.sample (#13): the guided DDIM loop equals one written by hand with two separate forwards,
seeds reproduce, bad arguments are named with their CLI flag, the own-sampler hook (GANs) gets only
the options it declares, and the CLI writes a grid."""
from __future__ import annotations

import pytest
import torch

import genmodels
from genmodels.cli import main
from genmodels.generation.images import make_scheduler, sample, save_grid


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = genmodels.build_model(genmodels.preset("unet-digits", block_out_channels=[8, 16], norm_num_groups=4))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m.eval()


@pytest.mark.parametrize("w", [1.0, 2.5])
def test_guided_ddim_equals_a_hand_written_loop(model, w):
    out = sample(model, n=4, labels=[1, 3, 5, 7], steps=5, guidance=w, seed=11)
    g = torch.Generator().manual_seed(11)
    sched = make_scheduler(model.config, "ddim")
    sched.set_timesteps(5)
    x = torch.randn(4, 1, 8, 8, generator=g)
    y = torch.tensor([1, 3, 5, 7])
    with torch.no_grad():
        for t in sched.timesteps:
            cond = model(x, t, class_labels=y)
            eps = cond if w == 1 else (u := model(x, t, class_labels=torch.full_like(y, 10))) + w * (cond - u)
            x = sched.step(eps, t, x).prev_sample
    torch.testing.assert_close(out, x.clamp(-1, 1), rtol=1e-5, atol=1e-5)
    assert torch.equal(out, sample(model, n=4, labels=[1, 3, 5, 7], steps=5, guidance=w, seed=11))


@pytest.mark.parametrize("kw,flag", [(dict(labels=10), "--class"), (dict(steps=0), "--steps"),
                                     (dict(scheduler="euler"), "--scheduler"), (dict(guidance=-1.0), "--guidance"),
                                     (dict(n=0), "--n"), (dict(labels=[1, 2]), "--class")])
def test_bad_arguments_name_the_flag(model, kw, flag):
    with pytest.raises(ValueError, match=flag):
        sample(model, **{"n": 4, **kw})


def test_guidance_on_an_unconditional_model_is_refused():
    m = genmodels.build_model(genmodels.preset("unet-digits", block_out_channels=[8, 16], norm_num_groups=4,
                                               num_classes=0))
    with pytest.raises(ValueError, match="--guidance"):
        sample(m, n=2, guidance=1.5)
    assert sample(m, n=2, steps=2, seed=0, scheduler="dpm").shape == (2, 1, 8, 8)


def test_a_model_with_its_own_sampler_gets_only_its_options(monkeypatch):
    class Own(torch.nn.Module):
        sample_options = ()

        def __init__(self):
            super().__init__()
            self.config = genmodels.preset("unet-digits")
            self.seen = None

        def sample(self, n, labels=None, seed=None, batch_size=None, **options):
            self.seen = (n, labels, seed, batch_size, options)
            return torch.zeros(n, 1, 8, 8)

    from genmodels import registry
    fam = registry.get_family("diffusion")
    monkeypatch.setitem(registry._FAMILIES, "diffusion", registry.Family(**{**fam.__dict__, "model_class": Own}))
    own = Own()
    assert sample(own, n=3, labels=2, seed=5).shape == (3, 1, 8, 8) and own.seen == (3, 2, 5, None, {})
    sample(own, n=3, seed=5, batch_size=2)  # the contract's batch_size reaches the model's own sampler
    assert own.seen == (3, None, 5, 2, {})
    with pytest.raises(ValueError, match="--steps"):
        sample(own, n=3, steps=10)


def test_cli_sample_writes_a_grid(model, tmp_path, capsys):
    genmodels.save(model, tmp_path / "m")
    assert main(["sample", str(tmp_path / "m"), "--class", "7", "--n", "4", "--steps", "2",
                 "--out", str(tmp_path / "g.png"), "--no-progress"]) == 0
    from PIL import Image
    assert Image.open(tmp_path / "g.png").size == (2 * 65 + 1, 2 * 65 + 1)  # 2×2 images of 8×8 scaled 8×, 1-px gaps
    assert main(["sample", str(tmp_path / "m"), "--class", "12"]) == 2
    assert "--class" in capsys.readouterr().err
    with pytest.raises(ValueError, match="images must be"):
        save_grid(torch.zeros(2, 2, 8, 8), tmp_path / "x.png")
