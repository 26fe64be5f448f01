"""DCGAN (Radford, Metz & Chintala, 2016, "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks") in the layout of the pytorch/examples script
(``dcgan/main.py``), with the options GANConfig chooses.

With S = image_size = 4·2^k, g = g_width, d = d_width (the script: S = 64, k = 4)::

    G: z (N, z_dim[+n_classes], 1, 1)
         ConvT 4×4/1/0 → BN → ReLU          (N, g·2^(k−1), 4, 4)
         k−1 × [ConvT 4×4/2/1 → BN → ReLU]  … (N, g, S/2, S/2)      channels halve, size doubles
         ConvT 4×4/2/1 → tanh               (N, channels, S, S)     images in [−1, 1]
    D: x (N, channels[+1], S, S)
         k × [Conv 4×4/2/1 → (BN but on the first) → LeakyReLU(0.2)]  (N, d·2^(k−1), 4, 4) = φ(x)
         Conv 4×4/1/0                        (N,)                   the logit ψ(φ(x)): no sigmoid

Every conv is bias-free; weights ~ N(0, 0.02), BN scales ~ N(1, 0.02), shifts 0 (the script's
``weights_init``). For S = 8 (k = 1), G is 1→4→8 and D's only halving conv is its first (no BN).

Options:
- **Spectral norm** (Miyato et al., 2018, "Spectral Normalization for GANs"): every weight W of D is
  used as W/σ(W), σ from one power iteration per training-mode forward
  (``torch.nn.utils.parametrizations.spectral_norm``; u, v are buffers saved with the model). It is
  registered after initialisation, so its 15 starting iterations see the final weights and a first
  forward in eval mode is already normalised (the pitfall of pytorch #51800).
- **Class conditioning**: G reads [z; E_G[y]] (a learned embedding, Mirza & Osindero, 2014).
  ``projection``: D(x, y) = ψ(φ(x)) + ⟨V_y, Σ_hw φ(x)⟩ (Miyato & Koyama, 2018, "cGANs with
  Projection Discriminator"; V ~ N(0, 0.02)). ``embedding``: D reads E_D[y] reshaped to (1, S, S)
  as one more input channel.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..sampling import default_batch_size, sample_labels
from .config import GANConfig

INIT_STD = 0.02


def dcgan_init(module: nn.Module) -> None:
    """The pytorch/examples ``weights_init``: conv weights ~ N(0, 0.02); BN scale ~ N(1, 0.02), shift 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, INIT_STD)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, INIT_STD)
            nn.init.zeros_(m.bias)


def check_labels(labels: torch.Tensor | None, n: int, cfg: GANConfig, who: str) -> None:
    """``labels`` (N,) class ids in [0, n_classes) for a conditional model, None otherwise."""
    if not cfg.conditional:
        if labels is not None:
            raise ValueError(f"{who}: labels given to an unconditional model (conditioning='none')")
        return
    if labels is None:
        raise ValueError(f"{who}: labels are required (conditioning={cfg.conditioning!r}, "
                         f"n_classes={cfg.n_classes})")
    if labels.shape != (n,) or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{who}: labels must be an integer tensor of shape ({n},); got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    if labels.numel() and not bool(((labels >= 0) & (labels < cfg.n_classes)).all()):
        raise ValueError(f"{who}: labels must lie in [0, n_classes={cfg.n_classes})")


class Up(nn.Module):
    """ConvT 4×4 (stride 1 pad 0 from 1×1 to 4×4, else stride 2 pad 1: ×2) → BN → ReLU."""

    def __init__(self, c_in: int, c_out: int, first: bool):
        super().__init__()
        self.conv = nn.ConvTranspose2d(c_in, c_out, 4, 1 if first else 2, 0 if first else 1, bias=False)
        self.norm = nn.BatchNorm2d(c_out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(h)))


class Down(nn.Module):
    """Conv 4×4 stride 2 pad 1 (÷2) → BN (or none) → LeakyReLU(0.2)."""

    def __init__(self, c_in: int, c_out: int, batchnorm: bool):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False)
        self.norm = nn.BatchNorm2d(c_out) if batchnorm else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return nn.functional.leaky_relu(self.norm(self.conv(h)), 0.2)


class Generator(nn.Module):
    """``generator(z, labels=None)``: z (N, z_dim) or (N, z_dim, 1, 1) -> images (N, channels, S, S) in [−1, 1]."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.config = cfg
        k = cfg.resolution_steps
        widths = [cfg.g_width * 2 ** (k - 1 - i) for i in range(k)]  # S=64: 8g, 4g, 2g, g
        self.label_embed = nn.Embedding(cfg.n_classes, cfg.n_classes) if cfg.conditional else None
        c_in = cfg.z_dim + (cfg.n_classes if cfg.conditional else 0)
        self.blocks = nn.ModuleList()
        for i, w in enumerate(widths):
            self.blocks.append(Up(c_in, w, first=i == 0))
            c_in = w
        self.out = nn.ConvTranspose2d(c_in, cfg.channels, 4, 2, 1, bias=False)
        dcgan_init(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        if not isinstance(z, torch.Tensor) or not (
                (z.dim() == 2 and z.shape[1] == cfg.z_dim) or (z.dim() == 4 and z.shape[1:] == (cfg.z_dim, 1, 1))):
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z has shape {shape}; it must be (N, z_dim={cfg.z_dim}) or (N, {cfg.z_dim}, 1, 1)")
        n = z.shape[0]
        check_labels(labels, n, cfg, "generator")
        h = z.reshape(n, cfg.z_dim)
        if self.label_embed is not None:
            h = torch.cat([h, self.label_embed(labels)], dim=1)  # (N, z_dim + n_classes)
        h = h[:, :, None, None]  # (N, C, 1, 1)
        for block in self.blocks:
            h = block(h)  # (N, g·2^(k−1−i), 4·2^i, 4·2^i)
        return torch.tanh(self.out(h))  # (N, channels, S, S)


class Discriminator(nn.Module):
    """``discriminator(x, labels=None)``: x (N, channels, S, S) -> logits (N,) (no sigmoid)."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.config = cfg
        k = cfg.resolution_steps
        widths = [cfg.d_width * 2 ** i for i in range(k)]  # S=64: d, 2d, 4d, 8d
        embedding = cfg.conditioning == "embedding"
        self.label_plane = nn.Embedding(cfg.n_classes, cfg.image_size ** 2) if embedding else None
        c_in = cfg.channels + (1 if embedding else 0)
        self.blocks = nn.ModuleList()
        for i, w in enumerate(widths):
            self.blocks.append(Down(c_in, w, batchnorm=cfg.d_batchnorm and i > 0))
            c_in = w
        self.out = nn.Conv2d(c_in, 1, 4, 1, 0, bias=False)  # ψ
        self.projection = nn.Embedding(cfg.n_classes, c_in) if cfg.conditioning == "projection" else None
        dcgan_init(self)
        if self.projection is not None:
            nn.init.normal_(self.projection.weight, 0.0, INIT_STD)
        if cfg.spectral_norm:  # after initialisation: the starting power iterations see the final weights
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Embedding)) and m is not self.label_plane:
                    spectral_norm(m)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        want = (cfg.channels, cfg.image_size, cfg.image_size)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != want:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x has shape {shape}; it must be (N, {', '.join(map(str, want))}) "
                             f"(channels={cfg.channels}, image_size={cfg.image_size})")
        n = x.shape[0]
        check_labels(labels, n, cfg, "discriminator")
        h = x
        if self.label_plane is not None:
            plane = self.label_plane(labels).view(n, 1, cfg.image_size, cfg.image_size)
            h = torch.cat([h, plane.to(x.dtype)], dim=1)  # (N, channels + 1, S, S)
        for block in self.blocks:
            h = block(h)  # (N, d·2^i, S/2^(i+1), S/2^(i+1))
        logits = self.out(h).view(n)  # φ(x) = h (N, d·2^(k−1), 4, 4) -> ψ(φ(x)) (N,)
        if self.projection is not None:
            logits = logits + (self.projection(labels) * h.sum(dim=(2, 3))).sum(dim=1)  # ⟨V_y, Σ_hw φ(x)⟩
        return logits


class DCGAN(nn.Module):
    """The pair: ``model.generator`` and ``model.discriminator``; ``model(z, labels)`` is the generator.

    Sampling (the hook of :func:`genmodels.sample`): one generator pass, so none of the diffusion
    sampler's options (steps, scheduler, guidance) applies: ``sample_options`` is empty."""

    family = "gan"
    sample_options: tuple[str, ...] = ()

    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        self.tokenizer = None  # images need none
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(z, labels)

    def with_generator(self, generator: nn.Module) -> "DCGAN":
        """This pair with another generator (the EMA average), the modules shared: nothing is copied."""
        view = copy.copy(self)
        view._modules = {**self._modules, "generator": generator}
        return view

    @torch.no_grad()
    def sample(self, n: int, labels=None, seed: int | None = None, generator: torch.Generator | None = None,
               batch_size: int | None = None, **options) -> torch.Tensor:
        """``n`` images (N, channels, S, S) in [−1, 1] from z ~ N(0, I), G in eval mode (BN running statistics).

        ``labels`` (conditional models): None = classes in turn, an int = all of that class, or one per image;
        z is drawn on the CPU from ``seed`` (or ``generator``; neither: torch's global generator); G sees
        ``batch_size`` images at a time (default :func:`~genmodels.models.sampling.default_batch_size`)."""
        if options:
            name = sorted(options)[0]
            raise ValueError(f"{name} (--{name}) does not apply to a GAN: it samples in one generator pass "
                             "(no steps, scheduler or guidance)")
        y = sample_labels(self.config.num_classes, n, labels)
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        p = next(self.generator.parameters())
        z = torch.randn(n, self.config.z_dim, generator=generator).to(p.device, p.dtype)  # (N, z_dim)
        was = self.generator.training
        self.generator.eval()
        y = None if y is None else y.to(p.device)
        b = batch_size or default_batch_size(self.config)  # G's activations bounded by the chunk (z drawn whole)
        try:
            return torch.cat([self.generator(z[a:a + b], None if y is None else y[a:a + b]) for a in range(0, n, b)])
        finally:
            self.generator.train(was)
