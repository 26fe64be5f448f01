"""pytorch/examples DCGAN checkpoints (``dcgan/main.py``'s ``netG_epoch_N.pth``, ``netD_epoch_N.pth``) -> DCGAN.

    model = genmodels.from_torch_dcgan(torch.load("netG_epoch_24.pth"), torch.load("netD_epoch_24.pth"))
    genmodels.save(model, "runs/dcgan-from-pytorch-examples")

The script keeps each network as one ``nn.Sequential`` called ``main``; with k resolution steps
(image_size = 4·2^k; the script: k = 4, 64×64)::

    theirs (Generator.main)                          ours
    main.{3i}.weight      ConvT (C_in, C_out, 4, 4)  generator.blocks.{i}.conv.weight      i < k
    main.{3i+1}.*         BatchNorm2d (+ stats)      generator.blocks.{i}.norm.*
    main.{3k}.weight      ConvT (g, nc, 4, 4)        generator.out.weight                  (then tanh)

    theirs (Discriminator.main)                      ours
    main.0.weight         Conv (d, nc, 4, 4)         discriminator.blocks.0.conv.weight    (no BN)
    main.{3i−1}.weight    Conv                       discriminator.blocks.{i}.conv.weight  0 < i < k
    main.{3i}.*           BatchNorm2d (+ stats)      discriminator.blocks.{i}.norm.*
    main.{3k−1}.weight    Conv (1, 8d, 4, 4)         discriminator.out.weight              (their sigmoid dropped:
                                                                                           ours returns the logit)

Sizes come from the shapes: ``z_dim`` = nz (main.0 of G, dim 0), ``g_width`` = ngf (the last ConvT's input),
``channels`` = nc, k = the number of ConvTs − 1; ``d_width`` = ndf (main.0 of D, dim 0). Without ``netD`` the
discriminator is a fresh DCGAN-initialised one with ``d_width = g_width`` (the script's default ndf = ngf).
BatchNorm running statistics (and ``num_batches_tracked``) are copied, so eval-mode outputs are equal. A key
missing, left over or of another shape is refused, naming it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from ..models.gan import DCGAN, GANConfig
from ..models.gan.config import IMAGE_SIZES
from .base import ConversionError

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _state(sd: Any, who: str) -> dict[str, torch.Tensor]:
    """A state dict (or a path to a ``torch.save``'d one) as a plain dict we may pop from."""
    if isinstance(sd, (str, Path)):
        from ..files import read_torch_bin
        try:
            sd = read_torch_bin(Path(sd))  # the one safe reader: names the file, never unpickles objects
        except ValueError as e:
            raise ConversionError(f"{who}: {e}") from None
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConversionError(f"{who} must be a state dict (key -> tensor) saved by the pytorch/examples DCGAN "
                              "script, e.g. torch.load('netG_epoch_24.pth')")
    return dict(sd)


def _convs(sd: dict[str, torch.Tensor], who: str) -> list[int]:
    """The ``main.N`` indices holding a 4-D (conv) weight, in order."""
    idx = sorted(int(k.split(".")[1]) for k, v in sd.items()
                 if k.startswith("main.") and k.endswith(".weight") and k.split(".")[1].isdigit() and v.dim() == 4)
    if not idx:
        raise ConversionError(f"{who}: no main.N.weight convolution found; keys: {', '.join(list(sd)[:8])}")
    return idx


def _layout(convs: list[int]) -> str | None:
    """Whose ``main.N`` convolution indices these are: "G" (ConvT, BN, ReLU: 0, 3, 6, …), "D" (Conv, LeakyReLU,
    then Conv, BN, LeakyReLU: 0, 2, 5, 8, …), or None."""
    n = len(convs)
    if convs == [3 * i for i in range(n)]:
        return "G"
    return "D" if convs == [0] + [3 * i - 1 for i in range(1, n)] else None


def _check_roles(g: dict[str, torch.Tensor], d: dict[str, torch.Tensor] | None) -> None:
    """Refuse a discriminator passed as the generator (or the reverse), saying so: its shapes would
    otherwise be read as an odd generator (``channels=512``)."""
    where = {"G": "main.0, main.3, main.6, … (the Generator's layout)",
             "D": "main.0, main.2, main.5, … (the Discriminator's layout)"}
    g_is = _layout(_convs(g, "netG"))
    d_is = None if d is None else _layout(_convs(d, "netD"))
    if g_is == "D" and d_is == "G":
        raise ConversionError(f"netG_state_dict and netD_state_dict look swapped: netG's convolutions sit at "
                              f"{where['D']}, netD's at {where['G']}; pass the generator first")
    if g_is == "D":
        raise ConversionError(f"netG_state_dict looks like a discriminator: its convolutions sit at {where['D']}; "
                              "pass the generator's state dict (netG_epoch_N.pth) first")
    if d_is == "G":
        raise ConversionError(f"netD_state_dict looks like a generator: its convolutions sit at {where['G']}; "
                              "pass the discriminator's state dict (netD_epoch_N.pth) second")


def config_from_dcgan(g: dict[str, torch.Tensor], d: dict[str, torch.Tensor] | None) -> GANConfig:
    """GANConfig read from the shapes of the two state dicts."""
    _check_roles(g, d)
    convs = _convs(g, "netG")
    k = len(convs) - 1
    size = 4 * 2 ** k
    if size not in IMAGE_SIZES:
        raise ConversionError(f"netG has {len(convs)} ConvTranspose2d layers (main.{convs[-1]}.weight is the last), "
                              f"i.e. {size}×{size} images; supported image sizes: {IMAGE_SIZES}")
    if "main.0.weight" not in g:
        raise ConversionError("missing key in netG: main.0.weight")
    last = g[f"main.{convs[-1]}.weight"]  # (g_width, channels, 4, 4)
    kw = dict(z_dim=g["main.0.weight"].shape[0], image_size=size, channels=last.shape[1], g_width=last.shape[0])
    if d is not None:
        if "main.0.weight" not in d:
            raise ConversionError("missing key in netD: main.0.weight")
        kw["d_width"] = d["main.0.weight"].shape[0]
    else:
        kw["d_width"] = kw["g_width"]
    try:
        return GANConfig(**kw)
    except ValueError as e:
        raise ConversionError(f"netG/netD shapes give an unsupported config: {e}") from None


def _mapping(cfg: GANConfig, with_d: bool) -> dict[str, str]:
    """ours -> theirs, prefixed ``G:`` / ``D:`` on their side."""
    k, m = cfg.resolution_steps, {}
    for i in range(k):
        m[f"generator.blocks.{i}.conv.weight"] = f"G:main.{3 * i}.weight"
        m.update({f"generator.blocks.{i}.norm.{b}": f"G:main.{3 * i + 1}.{b}" for b in BN})
    m["generator.out.weight"] = f"G:main.{3 * k}.weight"
    if with_d:
        m["discriminator.blocks.0.conv.weight"] = "D:main.0.weight"
        for i in range(1, k):
            m[f"discriminator.blocks.{i}.conv.weight"] = f"D:main.{3 * i - 1}.weight"
            m.update({f"discriminator.blocks.{i}.norm.{b}": f"D:main.{3 * i}.{b}" for b in BN})
        m["discriminator.out.weight"] = f"D:main.{3 * k - 1}.weight"
    return m


def from_torch_dcgan(netG_state_dict: Any, netD_state_dict: Any = None) -> DCGAN:
    """Our :class:`DCGAN` (eval mode) holding the pytorch/examples ``Generator`` (and ``Discriminator``)
    weights and BatchNorm statistics; state dicts or paths to them."""
    g = _state(netG_state_dict, "netG_state_dict")
    d = None if netD_state_dict is None else _state(netD_state_dict, "netD_state_dict")
    cfg = config_from_dcgan(g, d)
    model = DCGAN(cfg)
    ours = model.state_dict()
    theirs = {"G": g, "D": d}
    new = {}
    for key, src in _mapping(cfg, d is not None).items():
        side, name = src.split(":", 1)
        sd = theirs[side]
        if name not in sd:
            raise ConversionError(f"missing key in net{side}: {name} (for {key}; {cfg.image_size}×{cfg.image_size} "
                                  f"layout read from the shapes)")
        t = sd.pop(name)
        if t.shape != ours[key].shape:
            raise ConversionError(f"net{side} {name} has shape {tuple(t.shape)}; the {cfg.image_size}×"
                                  f"{cfg.image_size} layout read from the shapes needs {tuple(ours[key].shape)} "
                                  f"(for {key})")
        new[key] = t.to(ours[key].dtype)
    for side, sd in theirs.items():
        if sd:
            raise ConversionError(f"unexpected keys in net{side}: {', '.join(sorted(sd)[:12])} (not in the "
                                  f"pytorch/examples DCGAN layout with {cfg.resolution_steps + 1} convolutions)")
    missing = model.load_state_dict(new, strict=False).missing_keys
    assert all(k.startswith("discriminator.") for k in missing) and (d is None or not missing), missing
    return model.eval()
