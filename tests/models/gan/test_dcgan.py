"""The GAN family (issue #14, deliverable 1): DCGAN shapes and ranges per size, the strict config, the init,
class conditioning (projection by hand), spectral norm (σ_max = 1 after power iterations, normalised from the
first eval-mode forward, reusable in one graph and under R1's double backward), save/load, the registry entry."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import genmodels
from genmodels import ConfigError, registry
from genmodels.models.gan import DCGAN, GANConfig
from genmodels.objectives.gan_losses import r1_penalty
from tests.helpers.tiny import randomise

TINY = dict(z_dim=6, g_width=4, d_width=3)


def tiny(**kw) -> GANConfig:
    return GANConfig(**{**TINY, **kw})


def labels(n: int, k: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", [8, 16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_ranges_per_size(size, channels):
    model = randomise(DCGAN(tiny(image_size=size, channels=channels)))
    z = torch.randn(3, 6)
    img = model.generator(z)
    assert img.shape == (3, channels, size, size)
    peak = float(img.detach().abs().max())
    assert 0.5 < peak <= 1.0  # tanh, not clipped to 0
    torch.testing.assert_close(model.generator(z[:, :, None, None]), img, rtol=0, atol=0)
    logits = model.discriminator(img)
    assert logits.shape == (3,)
    assert not any(isinstance(m, nn.Sigmoid) for m in model.modules())  # logits, the losses take them
    convs = [m for m in model.generator.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(convs) == size.bit_length() - 2 and all(m.bias is None for m in convs)
    bns = [m for m in model.discriminator.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == size.bit_length() - 4  # every halving conv but the first


def test_the_dcgan_init():
    """Conv weights ~ N(0, 0.02), BN scales ~ N(1, 0.02), shifts 0 (the script's weights_init)."""
    torch.manual_seed(0)
    model = DCGAN(genmodels.preset("dcgan-32"))
    w = model.generator.blocks[1].conv.weight.detach()  # 256·128·16 values
    assert abs(float(w.mean())) < 1e-3 and abs(float(w.std()) - 0.02) < 5e-4
    s = model.discriminator.blocks[2].norm.weight.detach()
    assert abs(float(s.mean()) - 1) < 0.01 and float(s.std()) < 0.03
    assert float(model.discriminator.blocks[2].norm.bias.detach().abs().max()) == 0


@pytest.mark.parametrize("field,value,message", [
    ("image_size", 48, r"model\.image_size=48 is not allowed; choose one of 8, 16, 32, 64"),
    ("channels", 2, r"model\.channels=2 is not allowed; choose one of 1, 3"),
    ("conditioning", "concat", r"model\.conditioning='concat' is not allowed"),
    ("loss", "wasserstein", r"model\.loss='wasserstein' is not allowed; choose one of non_saturating, hinge"),
    ("z_dim", 0, r"model\.z_dim=0 must be >= 1"),
    ("r1_every", 0, r"model\.r1_every=0 must be >= 1"),
    ("r1_gamma", -1.0, r"model\.r1_gamma=-1\.0 must be >= 0"),
    ("ema_decay", 1.0, r"model\.ema_decay=1\.0 must be in \[0, 1\)"),
    ("n_classes", 3, r"model\.n_classes=3 means nothing with conditioning='none'"),
    ("spectral_norm", "yes", r"model\.spectral_norm='yes' must be true or false"),
])
def test_bad_config_values_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        genmodels.preset("dcgan-32", **{field: value})


def test_conditioning_needs_classes_and_unknown_keys_are_named():
    with pytest.raises(ConfigError, match=r"model\.n_classes=0 must be >= 2 with conditioning='projection'"):
        GANConfig(conditioning="projection")
    with pytest.raises(ConfigError, match=r"unknown model config key\(s\): ngf"):
        registry.config_from_dict({"family": "gan", "ngf": 64})


def test_projection_discriminator_by_hand():
    """D(x, y) = ψ(φ(x)) + ⟨V_y, Σ_hw φ(x)⟩ (Miyato & Koyama, 2018), φ(x) the last hidden features."""
    model = randomise(DCGAN(tiny(image_size=16, conditioning="projection", n_classes=10))).eval()
    d, x, y = model.discriminator, torch.randn(4, 3, 16, 16), labels(4)
    feats = {}
    d.out.register_forward_hook(lambda m, args, out: feats.update(phi=args[0]))
    got = d(x, y)
    phi = feats["phi"]  # (4, 2·d_width, 4, 4)
    want = d.out(phi).view(4) + (d.projection.weight[y] * phi.sum(dim=(2, 3))).sum(1)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(d(x, (y + 1) % 10), got)


@pytest.mark.parametrize("conditioning", ["projection", "embedding"])
def test_labels_steer_both_players_and_are_checked(conditioning):
    model = randomise(DCGAN(tiny(image_size=8, channels=1, conditioning=conditioning, n_classes=10))).eval()
    z, y = torch.randn(4, 6), labels(4)
    img = model.generator(z, y)
    assert not torch.allclose(model.generator(z, (y + 1) % 10), img)
    assert not torch.allclose(model.discriminator(img, (y + 1) % 10), model.discriminator(img, y))
    with pytest.raises(ValueError, match=r"generator: labels are required \(conditioning="):
        model.generator(z)
    with pytest.raises(ValueError, match=r"discriminator: labels must lie in \[0, n_classes=10\)"):
        model.discriminator(img, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match=r"labels must be an integer tensor of shape \(4,\)"):
        model.generator(z, y.float())
    plain = DCGAN(tiny(image_size=8))
    with pytest.raises(ValueError, match="labels given to an unconditional model"):
        plain.generator(z, y)


def test_bad_inputs_name_the_argument():
    model = DCGAN(tiny(image_size=16))
    with pytest.raises(ValueError, match=r"z has shape \(2, 5\); it must be \(N, z_dim=6\)"):
        model.generator(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"x has shape \(2, 3, 8, 8\); it must be \(N, 3, 16, 16\)"):
        model.discriminator(torch.randn(2, 3, 8, 8))


def _sigma(m: nn.Module) -> float:
    """The largest singular value of the weight the layer uses, as the (out, −1) matrix spectral norm divides."""
    w = m.weight.detach()
    return float(torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2))


def _sn_layers(model: DCGAN) -> list[nn.Module]:
    return [m for m in model.discriminator.modules() if isinstance(m, (nn.Conv2d, nn.Embedding))]


def test_spectral_norm_gives_unit_sigma_after_power_iterations():
    model = DCGAN(tiny(image_size=32, spectral_norm=True, d_batchnorm=False, conditioning="projection", n_classes=5))
    randomise(model, seed=1)  # new weights: u, v are stale until training-mode forwards iterate
    layers = _sn_layers(model)
    assert len(layers) == 5 and all(hasattr(m, "parametrizations") for m in layers)
    x, y = torch.randn(4, 3, 32, 32), labels(4, 5)
    for _ in range(30):  # one power iteration per training-mode forward
        model.discriminator(x, y)
    for m in layers:
        assert abs(_sigma(m) - 1.0) < 1e-2, (m, _sigma(m))
    plain = randomise(DCGAN(tiny(image_size=32)), seed=1)  # without it: far from 1
    assert all(abs(_sigma(m) - 1.0) > 0.5 for m in _sn_layers(plain))


def test_spectral_norm_is_ready_at_the_first_eval_forward():
    """Registered after the init, its starting iterations see the final weights (pytorch #51800's pitfall).

    Its 15 starting iterations are within a few % (the first conv's top singular values are 2 % apart, so the
    power method converges slowly); registered before the init, σ would be off by the init's scale change (×7)."""
    torch.manual_seed(0)
    model = DCGAN(genmodels.preset("dcgan-digits")).eval()
    assert all(abs(_sigma(m) - 1.0) < 5e-2 for m in _sn_layers(model))


def test_spectral_norm_discriminator_is_reused_in_one_graph_and_double_backward():
    """D(real) and D(fake) in one graph, plus R1's gradient of a gradient (pytorch #66363's in-place error)."""
    model = DCGAN(genmodels.preset("dcgan-digits")).train()
    y = labels(8)
    real = torch.rand(8, 1, 8, 8).mul(2).sub(1).requires_grad_(True)
    fake = model.generator(torch.randn(8, 32), y)
    d = model.discriminator
    real_logits = d(real, y)
    loss = real_logits.mean() - d(fake, y).mean() + r1_penalty(real_logits, real, 1.0)
    loss.backward()
    assert all(p.grad is not None for p in d.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.parameters())


def test_sample_and_save_load_round_trip(tmp_path):
    model = randomise(DCGAN(genmodels.preset("dcgan-digits")), seed=2)
    model.train()
    for _ in range(3):  # move the BN statistics and the power-iteration vectors away from their start
        model.discriminator(model.generator(torch.randn(8, 32), labels(8)), labels(8))
    model.eval()
    genmodels.save(model, tmp_path / "m")
    back = genmodels.load(tmp_path / "m")
    assert isinstance(back, DCGAN) and back.config == model.config and not back.training
    y = labels(5)
    a = model.sample(5, y, generator=torch.Generator().manual_seed(3))
    assert a.shape == (5, 1, 8, 8) and float(a.abs().max()) <= 1
    torch.testing.assert_close(back.sample(5, y, generator=torch.Generator().manual_seed(3)), a, rtol=0, atol=0)
    torch.testing.assert_close(back.discriminator(a, y), model.discriminator(a, y), rtol=0, atol=0)


def test_registry_entry():
    fam = registry.get_family("gan")
    assert {"dcgan-digits", "dcgan-32", "dcgan-64"} <= set(fam.presets)
    assert not fam.can(registry.GENERATES) and fam.objective == "gan"
    c64 = genmodels.preset("dcgan-64")
    assert (c64.z_dim, c64.g_width, c64.d_width, c64.image_size, c64.channels) == (100, 64, 64, 64, 3)
    for name in ("dcgan-digits", "dcgan-32", "dcgan-64"):
        cfg = genmodels.preset(name)
        with torch.device("meta"):
            n = sum(p.numel() for p in genmodels.build_model(cfg).parameters())
        assert fam.counts.parameter_count(cfg) == n
    assert genmodels.preset("dcgan-digits").conditional and genmodels.preset("dcgan-digits").image_size == 8
    model = genmodels.build_model(genmodels.preset("dcgan-digits"))
    with pytest.raises(ValueError, match="generate needs a model that generates text; this is a model of family 'gan'; it samples images"):
        genmodels.generate(model, torch.tensor([[1]]), 2)
