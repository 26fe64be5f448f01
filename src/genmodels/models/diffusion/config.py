"""DiffusionConfig: a denoiser (UNet or DiT) and the noise schedule it is trained for, as data.

One config covers the family: ``backbone`` chooses the network, the fields of the other backbone
keep their defaults (a value there would be silently ignored, so it is refused naming the field).
The UNet fields carry diffusers' ``UNet2DModel`` names and defaults; the DiT fields are DiT-S/2's
(Peebles & Xie, 2023). The schedule fields (diffusers' ``DDPMScheduler`` names) are read by the
trainer and samplers, not by the network.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from ...config import MAX_LAYERS, MAX_PER_LEVEL, ConfigError, StrictConfig

BACKBONES = ("unet", "dit")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
UNET_FIELDS = ("block_out_channels", "layers_per_block", "attention_levels", "mid_attention", "attention_head_dim",
               "norm_num_groups", "norm_eps", "downsample_padding", "dropout")
DIT_FIELDS = ("patch_size", "hidden_size", "depth", "num_heads", "mlp_ratio")
OWN_FIELDS = {"unet": UNET_FIELDS, "dit": DIT_FIELDS}
DIT_FREQ_DIM = 256  # DiT's timestep sinusoid width (its TimestepEmbedder's frequency_embedding_size)


@dataclass
class DiffusionConfig(StrictConfig):
    family: str = "diffusion"
    backbone: str = "unet"  # unet | dit
    # the images
    image_size: int = 32  # H = W
    in_channels: int = 3
    out_channels: int | None = None  # None -> in_channels (2·in_channels for a learned variance)
    # class conditioning: num_classes labels 0 … num_classes−1; with null_class one more row, label
    # num_classes, stands for "no label" (classifier-free guidance). Unconditional when num_classes = 0.
    num_classes: int = 0
    null_class: bool = True
    # timestep sinusoid (nn/timestep.py): [cos, sin] order and the frequency shift
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    # ---- UNet (diffusers UNet2DModel's names and defaults) ----
    block_out_channels: list[int] = field(default_factory=lambda: [224, 448, 672, 896])  # width per level
    layers_per_block: int = 2  # resnets per down level (up levels: one more)
    attention_levels: list[int] = field(default_factory=lambda: [1, 2, 3])  # levels with self-attention
    mid_attention: bool = True  # self-attention between the two middle resnets
    attention_head_dim: int | None = 8  # None -> one head as wide as the level
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    downsample_padding: int = 1  # 1: pad all sides; 0: right/bottom only (original DDPM)
    dropout: float = 0.0  # inside each resnet
    # ---- DiT (DiT-S/2) ----
    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    # ---- the noise schedule (diffusers DDPMScheduler's names and defaults) ----
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    prediction_type: str = "epsilon"

    # ---- derived -------------------------------------------------------------------------------
    @property
    def output_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    @property
    def label_rows(self) -> int:
        """Rows of the class-embedding table (0: unconditional)."""
        return self.num_classes + (1 if self.num_classes and self.null_class else 0)

    @property
    def null_label(self) -> int | None:
        """The label meaning "no class" (classifier-free guidance), or None."""
        return self.num_classes if self.num_classes and self.null_class else None

    # ---- validation ----------------------------------------------------------------------------
    def _at_least(self, name: str, low: int | float, value=None) -> None:
        v = getattr(self, name) if value is None else value
        if v < low:
            raise ConfigError(f"{self.where(name)}={v!r} must be >= {low}")

    def validate(self) -> None:
        if self.family != "diffusion":
            raise ConfigError(f"{self.where('family')}={self.family!r} must be 'diffusion' for a DiffusionConfig")
        self.check_choice("backbone", BACKBONES)
        self.check_choice("beta_schedule", BETA_SCHEDULES)
        self.check_choice("prediction_type", PREDICTION_TYPES)
        for name in ("image_size", "in_channels", "num_train_timesteps"):
            self._at_least(name, 1)
        if self.out_channels is not None:
            self._at_least("out_channels", 1)
        self._at_least("num_classes", 0)
        self._at_least("freq_shift", 0)
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ConfigError(f"{self.where('beta_start')}={self.beta_start} and beta_end={self.beta_end} "
                              "must satisfy 0 < beta_start <= beta_end < 1")
        defaults = {f.name: f for f in fields(self)}
        for other, names in OWN_FIELDS.items():
            if other == self.backbone:
                continue
            for name in names:
                f = defaults[name]
                default = f.default_factory() if callable(f.default_factory) else f.default
                if getattr(self, name) != default:
                    raise ConfigError(f"{self.where(name)}={getattr(self, name)!r} means nothing for "
                                      f"backbone={self.backbone!r}; leave it at {default!r}")
        (self._validate_unet if self.backbone == "unet" else self._validate_dit)()

    def _validate_unet(self) -> None:
        widths, levels = self.block_out_channels, len(self.block_out_channels)
        if not widths:
            raise ConfigError(f"{self.where('block_out_channels')}=[] must name at least one level's width")
        self._at_least("layers_per_block", 1)
        self.check_at_most("layers_per_block", MAX_PER_LEVEL)
        self._at_least("norm_num_groups", 1)
        self._at_least("norm_eps", 0.0)
        for i, c in enumerate(widths):
            if c < 1 or c % self.norm_num_groups:
                raise ConfigError(f"{self.where('block_out_channels')}[{i}]={c} must be a positive multiple of "
                                  f"norm_num_groups={self.norm_num_groups}")
        if self.downsample_padding not in (0, 1):
            raise ConfigError(f"{self.where('downsample_padding')}={self.downsample_padding} is not allowed; "
                              "choose 0 or 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{self.where('dropout')}={self.dropout} must be in [0, 1)")
        if self.image_size % 2 ** (levels - 1):
            raise ConfigError(f"{self.where('image_size')}={self.image_size} must be divisible by "
                              f"2^{levels - 1}={2 ** (levels - 1)} (one halving per level after the first)")
        if widths[0] // 2 <= self.freq_shift:
            raise ConfigError(f"{self.where('freq_shift')}={self.freq_shift} must be below half the first "
                              f"width ({widths[0] // 2})")
        if sorted(set(self.attention_levels)) != self.attention_levels or any(
                not 0 <= i < levels for i in self.attention_levels):
            raise ConfigError(f"{self.where('attention_levels')}={self.attention_levels} must be distinct level "
                              f"indices in [0, {levels}), in increasing order")
        if self.attention_head_dim is not None:
            self._at_least("attention_head_dim", 1)
            attended = [widths[i] for i in self.attention_levels] + ([widths[-1]] if self.mid_attention else [])
            for c in attended:
                if c % self.attention_head_dim:
                    raise ConfigError(f"{self.where('attention_head_dim')}={self.attention_head_dim} must divide "
                                      f"the width {c} of every level with attention")

    def _validate_dit(self) -> None:
        for name in ("patch_size", "hidden_size", "depth", "num_heads"):
            self._at_least(name, 1)
        self.check_at_most("depth", MAX_LAYERS)
        if self.mlp_ratio <= 0:
            raise ConfigError(f"{self.where('mlp_ratio')}={self.mlp_ratio} must be > 0")
        if self.image_size % self.patch_size:
            raise ConfigError(f"{self.where('patch_size')}={self.patch_size} must divide "
                              f"image_size={self.image_size}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"{self.where('hidden_size')}={self.hidden_size} must be divisible by "
                              f"num_heads={self.num_heads}")
        if self.hidden_size % 4:
            raise ConfigError(f"{self.where('hidden_size')}={self.hidden_size} must be divisible by 4 "
                              "(the 2-D sin-cos positions: sin and cos of rows and of columns)")
        if self.freq_shift >= DIT_FREQ_DIM // 2:
            raise ConfigError(f"{self.where('freq_shift')}={self.freq_shift} must be below {DIT_FREQ_DIM // 2}")
