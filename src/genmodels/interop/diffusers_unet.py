"""diffusers ``UNet2DModel`` folders both ways: ``config.json`` (with ``_class_name``) and
``diffusion_pytorch_model.safetensors`` (or the legacy ``.bin``), plus the schedule in
``scheduler_config.json`` (diffusers' ``DDPMScheduler`` form) when the folder has one.

The only code that knows diffusers' UNet key and config names. Our UNet2D keeps its own names; the
mapping is a list of renames (ours -> theirs), and our fused attention projection ``qkv`` is the
concatenation of diffusers' ``to_q``, ``to_k``, ``to_v`` rows. A config diffusers cannot express
(a DiT backbone) is refused on export, and a diffusers config we cannot build (cross-attention
blocks, scale-shift time conditioning, Fourier time embeddings, …) is refused on load, each naming
the field.

The null class has no diffusers field: a class-conditional model exports ``num_class_embeds =
num_classes + 1`` and records the null class under the private key ``_genmodels`` (diffusers ignores
keys that start with ``_``); a folder without it loads with every row a class.

A UNet2DModel folder alone does not carry its noise schedule, so the export records it twice: in
``scheduler_config.json`` (diffusers' form) and in config.json's ``_genmodels.schedule`` (the five
schedule fields), which loading prefers, so an export that lost its scheduler_config.json still loads
with the schedule it was trained for. A folder with neither loads with DiffusionConfig's default
schedule, with one warning naming it.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import ConfigError
from ..files import read_json, read_safetensors, read_torch_bin, write_safetensors
from ..models.diffusion.config import DiffusionConfig
from ..schedulers import DDPMScheduler
from ..schedulers.config import CONFIG_NAME as SCHEDULER_CONFIG
from ..schedulers.config import DIFFUSERS_VERSION  # the version whose UNet2DModel names and defaults these are
from .base import ANY, ConversionError, Converter, check_state, require_exportable

CLASS_NAME = "UNet2DModel"
WEIGHTS = "diffusion_pytorch_model.safetensors"
LEGACY_WEIGHTS = "diffusion_pytorch_model.bin"
SCHEDULE_FIELDS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")
PRIVATE = "_genmodels"  # our fields diffusers has no key for

# diffusers keys we read into our fields (theirs -> ours); the schedule comes from scheduler_config.json
_SAME = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "attention_head_dim",
         "norm_num_groups", "norm_eps", "downsample_padding", "flip_sin_to_cos", "freq_shift", "dropout")
# diffusers UNet2DModel keys we cannot express unless they hold these values (default first)
_FIXED: dict[str, tuple[Any, ...]] = {
    "center_input_sample": (False,), "time_embedding_type": ("positional",), "time_embedding_dim": (None,),
    "mid_block_type": ("UNetMidBlock2D",), "mid_block_scale_factor": (1, 1.0), "downsample_type": ("conv",),
    "upsample_type": ("conv",), "act_fn": ("silu", "swish"), "attn_norm_num_groups": (None,),
    "resnet_time_scale_shift": ("default",), "class_embed_type": (None,)}
_READ = set(_SAME) | set(_FIXED) | {"sample_size", "down_block_types", "up_block_types", "add_attention",
                                    "num_class_embeds", "num_train_timesteps"}

# our key -> diffusers key, applied in order (regex, replacement); attention qkv is split in three below
_RENAMES = [
    (r"^time_embed\.fc1\.", "time_embedding.linear_1."), (r"^time_embed\.fc2\.", "time_embedding.linear_2."),
    (r"^class_embed\.", "class_embedding."), (r"^norm_out\.", "conv_norm_out."),
    (r"^down\.(\d+)\.", r"down_blocks.\1."), (r"^up\.(\d+)\.", r"up_blocks.\1."), (r"^mid\.", "mid_block."),
    (r"\.time_proj\.", ".time_emb_proj."), (r"\.shortcut\.", ".conv_shortcut."),
    (r"\.downsample\.", ".downsamplers.0."), (r"\.upsample\.", ".upsamplers.0."),
    (r"^mid_block\.attention\.", "mid_block.attentions.0."),
    (r"\.norm\.(weight|bias)$", r".group_norm.\1"), (r"\.attn\.out\.", ".to_out.0."),
]
_QKV = re.compile(r"\.attn\.qkv\.")


def theirs(key: str) -> list[str]:
    """The diffusers key(s) of our state-dict key (three for a fused q|k|v projection)."""
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    if _QKV.search(key):
        return [_QKV.sub(f".{p}.", key) for p in ("to_q", "to_k", "to_v")]
    return [key]


def is_diffusers_config(hf_config: dict[str, Any]) -> bool:
    """A diffusers model's config.json names its class under ``_class_name``."""
    return "_class_name" in hf_config


class DiffusersUNetConverter(Converter):
    architectures = (CLASS_NAME,)
    model_type = "diffusers-unet2d"

    def exports(self, cfg: DiffusionConfig) -> bool:
        return getattr(cfg, "backbone", None) == "unet"

    def export_fields(self, cfg: DiffusionConfig) -> dict[str, Any]:
        """Every field diffusers (UNet2DModel + DDPMScheduler) expresses; the DiT fields are not here, so
        they must keep their defaults."""
        return {"family": ("diffusion",), "backbone": ("unet",), **{k: ANY for k in (
            "image_size", "in_channels", "out_channels", "num_classes", "null_class", "flip_sin_to_cos",
            "freq_shift", "block_out_channels", "layers_per_block", "attention_levels", "mid_attention",
            "attention_head_dim", "norm_num_groups", "norm_eps", "downsample_padding", "dropout",
            *SCHEDULE_FIELDS)}}

    # ---- config ---------------------------------------------------------------------------------
    def config_from_hf(self, hf: dict[str, Any], scheduler: dict[str, Any] | None = None,
                       where: str = "config.json", sched_where: str = SCHEDULER_CONFIG) -> DiffusionConfig:
        """Our config from a UNet2DModel config.json (and a scheduler_config.json's schedule)."""
        if hf.get("_class_name") != CLASS_NAME:
            raise ConversionError(f"{where}: _class_name={hf.get('_class_name')!r} is not supported; "
                                  f"genmodels reads diffusers {CLASS_NAME} folders")
        unknown = sorted(k for k in hf if not k.startswith("_") and k not in _READ)
        if unknown:
            raise ConversionError(f"{where}: {unknown[0]}={hf[unknown[0]]!r} is not a UNet2DModel setting "
                                  "genmodels knows; it cannot be loaded faithfully")
        for k, allowed in _FIXED.items():
            if hf.get(k, allowed[0]) not in allowed:
                raise ConversionError(f"{where}: {k}={hf[k]!r} has no equivalent in genmodels' UNet2D "
                                      f"(it needs {allowed[0]!r})")
        size = hf.get("sample_size")
        if isinstance(size, list) and len(size) == 2 and size[0] == size[1]:
            size = size[0]
        if not isinstance(size, int) or isinstance(size, bool):
            raise ConversionError(f"{where}: sample_size={size!r} must be one integer (square images)")
        _check_types(hf, where)
        levels = _attention_levels(hf, where)
        out: dict[str, Any] = {k: hf[k] for k in _SAME if k in hf}
        if "block_out_channels" in out:
            out["block_out_channels"] = list(out["block_out_channels"])
        out.update(family="diffusion", backbone="unet", image_size=size, attention_levels=levels,
                   mid_attention=bool(hf.get("add_attention", True)))
        out.setdefault("out_channels", hf.get("in_channels", 3))
        n_embeds = hf.get("num_class_embeds")
        null = (hf.get(PRIVATE) or {}).get("null_class", False)
        if not isinstance(null, bool):
            raise ConversionError(f"{where}: {PRIVATE}.null_class={null!r} must be true or false")
        if n_embeds is not None and (isinstance(n_embeds, bool) or not isinstance(n_embeds, int) or
                                     n_embeds < (2 if null else 0)):
            raise ConversionError(f"{where}: num_class_embeds={n_embeds!r} must be null or an integer >= "
                                  f"{'2 (one row per class, then the null class)' if null else '0 (0: unconditional)'}")
        if n_embeds:
            out.update(num_classes=n_embeds - 1 if null else n_embeds, null_class=null)
        out.update(_schedule(hf, scheduler, sched_where, where))
        if out["out_channels"] == out.get("in_channels", 3):
            out["out_channels"] = None
        try:
            return DiffusionConfig.from_dict(out)
        except ConfigError as e:  # our field names; say which files the values came from
            files = where if scheduler is None else f"{where} + {sched_where}"
            raise ConfigError(f"{files}: {e}") from None

    def config_to_hf(self, cfg: DiffusionConfig) -> dict[str, Any]:
        """diffusers' UNet2DModel config.json for ``cfg``; a field diffusers cannot express is refused."""
        require_exportable(cfg, f"diffusers {CLASS_NAME}", self.export_fields(cfg))
        levels = len(cfg.block_out_channels)
        down = ["AttnDownBlock2D" if i in cfg.attention_levels else "DownBlock2D" for i in range(levels)]
        up = ["AttnUpBlock2D" if i in cfg.attention_levels else "UpBlock2D" for i in reversed(range(levels))]
        hf: dict[str, Any] = {
            "_class_name": CLASS_NAME, "_diffusers_version": DIFFUSERS_VERSION, "sample_size": cfg.image_size,
            "in_channels": cfg.in_channels, "out_channels": cfg.output_channels,
            "block_out_channels": list(cfg.block_out_channels), "layers_per_block": cfg.layers_per_block,
            "down_block_types": down, "up_block_types": up, "add_attention": cfg.mid_attention,
            "attention_head_dim": cfg.attention_head_dim, "norm_num_groups": cfg.norm_num_groups,
            "norm_eps": cfg.norm_eps, "downsample_padding": cfg.downsample_padding,
            "flip_sin_to_cos": cfg.flip_sin_to_cos, "freq_shift": cfg.freq_shift, "dropout": cfg.dropout,
            "num_class_embeds": cfg.label_rows or None, **{k: v[0] for k, v in _FIXED.items()}}
        hf[PRIVATE] = {"schedule": {k: getattr(cfg, k) for k in SCHEDULE_FIELDS}}  # what loading prefers
        if cfg.num_classes:
            hf[PRIVATE]["null_class"] = cfg.null_label is not None
        return hf

    @staticmethod
    def scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
        """The schedule as our DDPMScheduler (the one source of diffusers' scheduler config form:
        ``scheduler(cfg).save_config(folder)`` writes what ``diffusers.DDPMScheduler.from_pretrained`` reads)."""
        return DDPMScheduler(**{k: getattr(cfg, k) for k in SCHEDULE_FIELDS})

    # ---- weights --------------------------------------------------------------------------------
    def state_to_hf(self, sd: dict[str, torch.Tensor], cfg: DiffusionConfig) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for k, v in sd.items():
            names = theirs(k)
            for name, part in zip(names, v.chunk(len(names), dim=0)):
                out[name] = part
        return out

    def state_from_hf(self, sd: dict[str, torch.Tensor], cfg: DiffusionConfig,
                      expected: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Our state dict from diffusers' (``expected``: our keys); pops what it uses, so leftovers in ``sd``
        are unexpected keys."""
        if expected is None:
            from ..models.diffusion import build_diffusion
            with torch.device("meta"):
                expected = build_diffusion(cfg).state_dict()
        out = {}
        for k in expected:
            names = theirs(k)
            missing = [n for n in names if n not in sd]
            if missing:
                raise ConversionError(f"missing key in checkpoint: {missing[0]}")
            parts = [sd.pop(n) for n in names]
            out[k] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        return out


def _check_types(hf: dict[str, Any], where: str) -> None:
    """The UNet2DModel keys whose shape the converter relies on, checked before anything reads them."""
    for k in ("block_out_channels", "down_block_types", "up_block_types"):
        if k in hf and not (isinstance(hf[k], (list, tuple)) and hf[k]):
            raise ConversionError(f"{where}: {k}={hf[k]!r} must be a non-empty list")
    if "add_attention" in hf and not isinstance(hf["add_attention"], bool):
        raise ConversionError(f"{where}: add_attention={hf['add_attention']!r} must be true or false")
    if PRIVATE in hf and not isinstance(hf[PRIVATE], dict):
        raise ConversionError(f"{where}: {PRIVATE}={hf[PRIVATE]!r} must be an object (genmodels' own fields)")


def _attention_levels(hf: dict[str, Any], where: str) -> list[int]:
    """Levels with attention from down/up block types, which must mirror each other."""
    down = hf.get("down_block_types", ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"])
    up = hf.get("up_block_types", ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"])
    kinds = {"DownBlock2D": False, "AttnDownBlock2D": True}
    for i, t in enumerate(down):
        if str(t).removeprefix("UNetRes") not in kinds:
            raise ConversionError(f"{where}: down_block_types[{i}]={t!r} is not supported; "
                                  f"choose DownBlock2D or AttnDownBlock2D")
    levels = [i for i, t in enumerate(down) if kinds[str(t).removeprefix("UNetRes")]]
    want = ["AttnUpBlock2D" if i in levels else "UpBlock2D" for i in reversed(range(len(down)))]
    if [str(t).removeprefix("UNetRes") for t in up] != want:
        raise ConversionError(f"{where}: up_block_types={list(up)} must mirror down_block_types={list(down)} "
                              f"(genmodels' UNet2D attends at the same levels both ways: {want})")
    if len(hf.get("block_out_channels", [0] * 4)) != len(down):
        raise ConversionError(f"{where}: block_out_channels has {len(hf['block_out_channels'])} widths for "
                              f"{len(down)} down_block_types")
    return levels


# scheduler_config.json settings that change the noise levels or the network's output and that our schedule
# fields cannot hold: refused unless at these values (diffusers' defaults)
_SCHEDULE_FIXED: dict[str, tuple[Any, ...]] = {"rescale_betas_zero_snr": (False, None),
                                               "variance_type": ("fixed_small", "fixed_small_log", "fixed_large",
                                                                 "fixed_large_log", None)}


def _schedule(hf: dict[str, Any], scheduler: dict[str, Any] | None, where: str = SCHEDULER_CONFIG,
              config_where: str = "config.json") -> dict[str, Any]:
    """The schedule fields: config.json's ``_genmodels.schedule`` record when there is one (our exports; a
    scheduler_config.json that disagrees with it is named in a warning), else scheduler_config.json's (its other
    keys are sampler settings, not the model's), else DiffusionConfig's defaults, named in a warning.
    Only beta-schedule schedulers (DDPM, DDIM, PNDM, DPM-Solver, Euler, …) describe our schedule: one without
    ``beta_schedule`` (score-SDE, flow matching) is refused, as are an explicit beta table, zero-terminal-SNR
    rescaling and a learned variance, naming the key."""
    out = {}
    if hf.get("num_train_timesteps") is not None:
        out["num_train_timesteps"] = hf["num_train_timesteps"]
    out.update(_read_scheduler(scheduler, where))
    record = (hf.get(PRIVATE) or {}).get("schedule")
    if record is not None:
        if not isinstance(record, dict) or sorted(record) != sorted(SCHEDULE_FIELDS):
            raise ConversionError(f"{config_where}: {PRIVATE}.schedule={record!r} must be an object with exactly "
                                  f"the keys {', '.join(SCHEDULE_FIELDS)}")
        differ = [k for k in SCHEDULE_FIELDS if scheduler is not None and k in scheduler and scheduler[k] != record[k]]
        if differ:
            warnings.warn(f"{where}: {differ[0]}={scheduler[differ[0]]!r} differs from the schedule recorded in "
                          f"{config_where} ({PRIVATE}.schedule: {differ[0]}={record[differ[0]]!r}), which the model was "
                          "exported with; using the recorded schedule", stacklevel=3)
        return {**out, **record}
    if scheduler is None:
        assumed = {k: getattr(DiffusionConfig, k) for k in SCHEDULE_FIELDS}
        assumed.update(out)
        warnings.warn(f"{config_where}: no {SCHEDULER_CONFIG} beside it and no {PRIVATE}.schedule in it, so the "
                      f"noise schedule is assumed: " + ", ".join(f"{k}={v!r}" for k, v in assumed.items()) +
                      f" (DiffusionConfig's defaults); put the scheduler_config.json the model was trained with "
                      "beside it if that is not its schedule", stacklevel=3)
    return out


def _read_scheduler(scheduler: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """The schedule fields of a scheduler_config.json (none when there is none), refusing what we cannot hold."""
    out = {}
    if scheduler is not None:
        if not isinstance(scheduler, dict):
            raise ConversionError(f"{where}: must be a JSON object (a diffusers scheduler config)")
        if "beta_schedule" not in scheduler:
            raise ConversionError(f"{where}: _class_name={scheduler.get('_class_name')!r} has no beta_schedule; "
                                  "genmodels' diffusion models use a beta schedule (DDPM, DDIM, PNDM, DPM-Solver, "
                                  "Euler schedulers), not score-SDE or flow-matching noise levels")
        if scheduler.get("trained_betas") is not None:
            raise ConversionError(f"{where}: trained_betas (an explicit beta table) has no equivalent "
                                  "in genmodels' schedule fields (beta_schedule, beta_start, beta_end)")
        for k, allowed in _SCHEDULE_FIXED.items():
            if scheduler.get(k, allowed[0]) not in allowed:
                raise ConversionError(f"{where}: {k}={scheduler[k]!r} has no equivalent in genmodels' schedule "
                                      f"(it needs {allowed[0]!r})")
        out.update({k: scheduler[k] for k in SCHEDULE_FIELDS if k in scheduler})
    return out


# ---- folders ------------------------------------------------------------------------------------
def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a diffusers model folder: safetensors first, else the legacy .bin (weights only)."""
    if (path / WEIGHTS).is_file():
        return read_safetensors(path / WEIGHTS)
    if (path / LEGACY_WEIGHTS).is_file():
        return read_torch_bin(path / LEGACY_WEIGHTS)
    raise FileNotFoundError(f"{path}: no {WEIGHTS} or {LEGACY_WEIGHTS}")


def load_diffusers(path: str | Path, hf_config: dict[str, Any], build: Callable[[Any], torch.nn.Module],
                   check: Callable[[Any], None] | None = None, sched_file: Path | None = None) -> torch.nn.Module:
    """Our UNet2D from a diffusers UNet2DModel folder; every key and shape is checked before loading. The
    schedule comes from ``sched_file`` (default: the folder's own scheduler_config.json) when it exists."""
    path = Path(path)
    required = sched_file is not None  # a pipeline names its scheduler: it must be there
    sched_file = path / SCHEDULER_CONFIG if sched_file is None else sched_file
    if required and not sched_file.is_file():
        raise FileNotFoundError(f"{sched_file}: missing (the pipeline's model_index.json names a scheduler, "
                                "whose schedule the model was trained for)")
    scheduler = read_json(sched_file) if sched_file.is_file() else None
    conv = DiffusersUNetConverter()
    cfg = conv.config_from_hf(hf_config, scheduler, where=str(path / "config.json"), sched_where=str(sched_file))
    if check is not None:
        check(cfg)
    sd = read_weights(path)
    model = build(cfg)
    expected = model.state_dict()
    check_state(conv.state_to_hf(expected, cfg), sd, {}, str(path))  # in diffusers' names, all at once
    ours = conv.state_from_hf(sd, cfg, expected)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in ours.items()})
    return model


PIPELINE_INDEX = "model_index.json"  # what a diffusers pipeline's save_pretrained writes at the top
PIXEL_PIPELINES = ("DDPMPipeline", "DDIMPipeline")  # a UNet2DModel + a scheduler: what our UNet2D is


def is_pipeline_folder(path: Path) -> bool:
    return (path / PIPELINE_INDEX).is_file() and not (path / "config.json").is_file()


def load_pipeline(path: str | Path, build: Callable[[Any], torch.nn.Module],
                  check: Callable[[Any], None] | None = None) -> torch.nn.Module:
    """Our UNet2D from a diffusers pipeline folder (``DDPMPipeline(unet, scheduler).save_pretrained``:
    model_index.json, ``unet/``, ``scheduler/``): the unet as :func:`load_diffusers` reads a model folder,
    the schedule from ``scheduler/scheduler_config.json``. A pipeline with other parts (a VAE, a text
    encoder: latent or text-to-image models) or whose unet is not a UNet2DModel is refused, naming it."""
    path = Path(path)
    index_file = path / PIPELINE_INDEX
    index = read_json(index_file)
    if not isinstance(index, dict):
        raise ValueError(f"{index_file}: must be a JSON object naming the pipeline's parts")
    unet = index.get("unet")
    if not (isinstance(unet, list) and len(unet) == 2 and unet[1] == "UNet2DModel"):
        raise ValueError(f"{index_file}: \"unet\" is {unet!r}; genmodels loads pipelines whose unet is a "
                         f"UNet2DModel ({', '.join(PIXEL_PIPELINES)})")
    sched = index.get("scheduler")
    if not (isinstance(sched, list) and len(sched) == 2 and isinstance(sched[1], str)):
        raise ValueError(f"{index_file}: \"scheduler\" is {sched!r}; a {', '.join(PIXEL_PIPELINES)} names its "
                         "scheduler (the schedule the unet was trained for)")
    others = sorted(k for k, v in index.items() if not k.startswith("_") and k not in ("unet", "scheduler")
                    and v not in (None, [None, None]))
    if others:
        raise ValueError(f"{index_file}: parts {others} of the {index.get('_class_name', 'pipeline')} have no place "
                         f"in genmodels' UNet2D, which is a pixel-space denoiser ({', '.join(PIXEL_PIPELINES)}: "
                         "unet and scheduler only)")
    config = path / "unet" / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config}: missing ({index_file} names a unet)")
    return load_diffusers(path / "unet", read_json(config), build, check,
                          sched_file=path / "scheduler" / SCHEDULER_CONFIG)


def diffusers_writer(model: torch.nn.Module) -> Callable[[Path], None]:
    """What writes ``model`` (a UNet2D) into a folder as diffusers' files (``genmodels.export_diffusers``
    fills the folder with it): ``diffusers.UNet2DModel.from_pretrained`` loads them with equal outputs (and
    ``DDPMScheduler.from_pretrained`` the schedule). A config diffusers cannot express is refused here,
    naming the field, before anything is written."""
    cfg = model.config
    if not isinstance(cfg, DiffusionConfig):
        raise ConversionError(f"cannot export as diffusers {CLASS_NAME}: model.family="
                              f"{getattr(cfg, 'family', None)!r} is not a diffusion model")
    conv = DiffusersUNetConverter()
    hf = conv.config_to_hf(cfg)
    scheduler = conv.scheduler(cfg)  # refuses a schedule diffusers cannot express, before anything is written
    sd = conv.state_to_hf({k: v.detach().cpu() for k, v in model.state_dict().items()}, cfg)

    def write(d: Path) -> None:
        write_safetensors({k: v.contiguous() for k, v in sd.items()}, d / WEIGHTS, metadata={"format": "pt"})
        scheduler.save_config(d)  # scheduler_config.json
        (d / "config.json").write_text(json.dumps(hf, indent=2) + "\n")

    return write
