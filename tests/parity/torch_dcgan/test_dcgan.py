"""``genmodels.from_torch_dcgan`` against the pytorch/examples DCGAN (``dcgan/main.py`` at 77f55b9; issue #14,
deliverable 1): the script's ``Generator`` / ``Discriminator`` are re-typed here from its layout (the script is
not importable: it parses arguments and loads data at import), every parameter and BatchNorm buffer randomised,
converted, and compared in float32 — the same images from the same noise, and our logit equal to their
pre-sigmoid output."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import genmodels
from genmodels.interop.base import ConversionError

pytestmark = pytest.mark.parity
TOL = dict(atol=1e-5, rtol=1e-4)


class TheirGenerator(nn.Module):
    """pytorch/examples dcgan/main.py ``Generator`` (64×64; ngpu path left out)."""

    def __init__(self, nz: int, ngf: int, nc: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, z):
        return self.main(z)


class TheirDiscriminator(nn.Module):
    """pytorch/examples dcgan/main.py ``Discriminator`` (64×64, sigmoid output)."""

    def __init__(self, ndf: int, nc: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid())

    def forward(self, x):
        return self.main(x).view(-1, 1).squeeze(1)

    def logits(self, x):
        return self.main[:-1](x).view(-1)


def randomise_all(module: nn.Module, seed: int) -> nn.Module:
    """Every weight ~ N(0, 0.2), BN scales ~ 1 + N(0, 0.2), running means ~ N(0, 0.2), variances ~ U(0.5, 1.5),
    counts random: default inits (and fresh statistics) would hide a swapped or missing buffer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.copy_(0.2 * torch.randn(m.weight.shape, generator=g))
    return module


def _pair(nz=8, ngf=4, ndf=3, nc=3, seed=0):
    net_g = randomise_all(TheirGenerator(nz, ngf, nc), seed).eval()
    return net_g, randomise_all(TheirDiscriminator(ndf, nc), seed + 1).eval()


@pytest.mark.parametrize("nc", [3, 1])
def test_converted_dcgan_gives_the_same_images_and_logits(nc, tmp_path):
    net_g, net_d = _pair(nc=nc)
    model = genmodels.from_torch_dcgan(net_g.state_dict(), net_d.state_dict())
    c = model.config
    assert (c.z_dim, c.image_size, c.channels, c.g_width, c.d_width) == (8, 64, nc, 4, 3)
    assert not model.training
    z = torch.randn(5, 8, 1, 1, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = net_g(z)
        got = model.generator(z)
        torch.testing.assert_close(got, want, **TOL)
        torch.testing.assert_close(model.generator(z.view(5, 8)), want, **TOL)  # (N, z_dim) as well
        x = torch.rand(5, nc, 64, 64) * 2 - 1
        torch.testing.assert_close(model.discriminator(x), net_d.logits(x), **TOL)
        torch.testing.assert_close(torch.sigmoid(model.discriminator(x)), net_d(x), **TOL)
        torch.testing.assert_close(model.discriminator(want), net_d.logits(want), **TOL)
    genmodels.save(model, tmp_path / "m")  # and what is saved loads back to the same function
    back = genmodels.load(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(back.generator(z), want, **TOL)
        torch.testing.assert_close(back.discriminator(x), net_d.logits(x), **TOL)


def test_training_mode_matches_too():
    """Batch statistics in training mode: the same BN placement and eps on both sides."""
    net_g, net_d = _pair(seed=3)
    model = genmodels.from_torch_dcgan(net_g.state_dict(), net_d.state_dict()).train()
    net_g.train(), net_d.train()
    z = torch.randn(6, 8, 1, 1, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(model.generator(z), net_g(z), **TOL)
        img = net_g(z)
        torch.testing.assert_close(model.discriminator(img), net_d.logits(img), **TOL)


def test_generator_only_gets_a_fresh_discriminator_of_the_generator_width():
    net_g, _ = _pair(ngf=5)
    model = genmodels.from_torch_dcgan(net_g.state_dict())
    assert model.config.d_width == 5
    z = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.generator(z), net_g(z[:, :, None, None]), **TOL)
    assert model.discriminator(torch.zeros(2, 3, 64, 64)).shape == (2,)


def test_mismatches_are_refused_naming_the_key():
    net_g, net_d = _pair()
    g, d = net_g.state_dict(), net_d.state_dict()
    with pytest.raises(ConversionError, match=r"netG main\.3\.weight has shape \(32, 17, 4, 4\)"):
        genmodels.from_torch_dcgan({**g, "main.3.weight": torch.zeros(32, 17, 4, 4)}, d)
    with pytest.raises(ConversionError, match=r"missing key in netD: main\.6\.running_var"):
        genmodels.from_torch_dcgan(g, {k: v for k, v in d.items() if k != "main.6.running_var"})
    with pytest.raises(ConversionError, match=r"unexpected keys in netG: main\.13\.bias"):
        genmodels.from_torch_dcgan({**g, "main.13.bias": torch.zeros(3)}, d)
    with pytest.raises(ConversionError, match=r"netD main\.0\.weight has shape \(3, 1, 4, 4\)"):
        genmodels.from_torch_dcgan(g, _pair(nc=1)[1].state_dict())  # D for 1 channel, G for 3
    with pytest.raises(ConversionError, match="netG_state_dict must be a state dict"):
        genmodels.from_torch_dcgan(net_g)
    with pytest.raises(ConversionError, match=r"6 ConvTranspose2d layers .*128×128 images"):
        genmodels.from_torch_dcgan({**g, "main.15.weight": torch.zeros(4, 3, 4, 4)}, d)
