"""Read and write Hugging Face model directories (config.json + safetensors / legacy .bin), offline.

This module and its converters are the only places that know another library's key names.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..models.config import ModelConfig
from ..files import write_safetensors
from .base import ConversionError, Converter, check_state
from .bert_hf import BertConverter
from .decoder_hf import GPT2Converter, LlamaConverter, MistralConverter
from .mixtral_hf import MixtralConverter
from .t5_hf import T5Converter

CONVERTERS: list[Converter] = [GPT2Converter(), LlamaConverter(), MistralConverter(), MixtralConverter(),
                               BertConverter(), T5Converter()]


def register(converter: Converter) -> None:
    """Add a converter for another architecture (a plug-in point for code outside genmodels)."""
    CONVERTERS.append(converter)


def converter_for_hf(hf_config: dict[str, Any]) -> Converter:
    archs = hf_config.get("architectures") or []
    for conv in CONVERTERS:
        if any(a in conv.architectures for a in archs):
            return conv
    for conv in CONVERTERS:
        if hf_config.get("model_type") == conv.model_type:
            return conv
    supported = sorted(a for c in CONVERTERS for a in c.architectures)
    raise ConversionError(f"unsupported architecture {archs or hf_config.get('model_type')!r}; "
                          f"supported: {', '.join(supported)}")


def converter_for_config(cfg: ModelConfig) -> Converter:
    """The converter we export a config through: the one it was loaded from, else the first of its
    family's converters (``Family.converters``) that takes its components."""
    arch = cfg.extra.get("hf_architecture")
    for conv in CONVERTERS:
        if arch in conv.architectures:
            return conv
    from ..registry import family_of
    fam = family_of(cfg)
    for model_type in fam.converters if fam is not None else ():  # the family's exporters, in its order
        for conv in CONVERTERS:
            if conv.model_type == model_type and conv.exports(cfg):
                return conv
    raise ConversionError(f"no Hugging Face architecture for family={getattr(cfg, 'family', None)!r}, "
                          f"position={getattr(cfg, 'position', None)!r}")


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF directory: ``*.safetensors`` (sharded or not), else ``pytorch_model.bin``
    through ``torch.load(weights_only=True)`` — never an unrestricted unpickle. A broken file is a
    one-line ValueError naming it."""
    from ..files import read_json, read_safetensors, read_torch_bin
    index = path / "model.safetensors.index.json"
    if index.is_file():  # sharded: exactly the shards the index names
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no \"weight_map\" object (tensor name -> shard file)")
        files = sorted({path / f for f in weight_map.values()})
    else:  # model.safetensors or model-0000x-of-0000y.safetensors; never a stray consolidated copy
        files = sorted(path.glob("model*.safetensors")) or sorted(path.glob("*.safetensors"))
    if files:
        sd: dict[str, torch.Tensor] = {}
        for f in files:
            sd.update(read_safetensors(f))
        return sd
    bins = sorted(path.glob("pytorch_model*.bin"))
    if bins:
        sd = {}
        for f in bins:
            sd.update(read_torch_bin(f))
        return sd
    raise FileNotFoundError(f"{path}: no *.safetensors or pytorch_model.bin weights found")


def load_hf(path: str | Path, build, check=None) -> torch.nn.Module:
    """Build our model from a local HF directory; fail naming any key or shape that does not fit.

    ``check(cfg)``, when given, vets the config before any weight is read or tensor built (the
    memory estimate of :func:`genmodels.load`)."""
    from ..files import read_json
    path = Path(path)
    hf_config = read_json(path / "config.json")
    from .diffusers_unet import is_diffusers_config, load_diffusers
    if is_diffusers_config(hf_config):  # a diffusers model folder (config.json names its _class_name)
        return load_diffusers(path, hf_config, build, check)
    conv = converter_for_hf(hf_config)
    cfg = conv.config_from_hf(hf_config)
    if check is not None:
        check(cfg)
    cfg.extra = {**cfg.extra, "hf_architecture": (hf_config.get("architectures") or [conv.architectures[0]])[0]}
    return build_from_hf_state(conv, cfg, read_hf_weights(path), build, str(path))


def build_from_hf_state(conv: Converter, cfg: ModelConfig, sd: dict[str, torch.Tensor], build,
                        where: str) -> torch.nn.Module:
    """Our model from a state dict in HF's names (a folder's weights, or a GGUF file's, renamed by
    interop/gguf.py): every key and shape checked against what ``cfg`` builds, nothing loaded
    partially; errors name ``where``."""
    sd = {k: v for k, v in sd.items() if not k.endswith(conv.ignored)}
    conv.normalize_keys(sd)
    refine = getattr(conv, "refine_config", None)  # heads / tying that only the weights reveal
    if refine is not None:
        cfg = refine(cfg, sd)
    model = build(cfg)
    expected = model.state_dict()
    # Check the file against the keys and shapes it should have, in its own names, before converting.
    expected_hf = conv.state_to_hf(expected, cfg)
    if cfg.tie_embeddings and "lm_head.weight" not in sd:
        expected_hf.pop("lm_head.weight", None)
    for k in getattr(conv, "optional", ()):  # copies a checkpoint may leave out (the converter checks them)
        if k not in sd:
            expected_hf.pop(k, None)
    check_state(expected_hf, {k: v for k, v in sd.items() if k in expected_hf}, {}, where)
    ours = conv.state_from_hf(sd, cfg)  # pops what it uses: sd keeps the leftovers
    check_state(expected, ours, sd, where)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in ours.items()})
    return model


def export_hf(model: torch.nn.Module, path: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that ``transformers`` loads with equal outputs."""
    path = Path(path)
    cfg: ModelConfig = model.config
    conv = converter_for_config(cfg)
    hf_config = conv.config_to_hf(cfg)
    sd = conv.state_to_hf({k: v.detach().cpu() for k, v in model.state_dict().items()}, cfg)
    if hf_config.get("tie_word_embeddings"):
        sd.pop("lm_head.weight", None)
    path.mkdir(parents=True, exist_ok=True)
    write_safetensors({k: v.contiguous() for k, v in sd.items()}, path / "model.safetensors",
                      metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    return path
