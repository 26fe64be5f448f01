"""Reward models on disk and at the command line: save, load, score a reply.

    genmodels.reward.save_reward(model, DIR, tokenizer)   # a genmodels folder + score.safetensors
    model = genmodels.reward.load_reward(PATH)            # ours, or transformers' LlamaForSequenceClassification
    genmodels.reward.score(model, "2 + 2 =", " 4")        # a float

A genmodels reward folder is the decoder's own folder (``genmodels.load`` reads the decoder alone from it)
with ``score.safetensors`` beside it: ``weight (1, d_model)`` and, in its metadata, the pad id the score is
read by. A transformers folder whose config.json names ``LlamaForSequenceClassification`` (one label) loads
through :mod:`genmodels.interop.reward_hf`, and :func:`export_reward_hf` writes one.

A reply is scored as the ``pairs`` data kind tokenises one side of a pair (:func:`genmodels.data.pairs.encode_reply`:
the prompt, the reply, EOS — or through the model's chat template with ``chat=True``), at its last token.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .files import read_safetensors, write_safetensors
from .folders import atomic_dir_write
from .interop.reward_hf import export_reward_hf, is_reward_folder, load_reward_hf
from .models.score_head import RewardModel

__all__ = ["SCORE_FILE", "export_reward_hf", "load_reward", "save_reward", "score"]

SCORE_FILE = "score.safetensors"


def save_reward(model: RewardModel, path: str | Path, tokenizer=None, overwrite: bool = False) -> Path:
    """Write ``model`` as a genmodels reward folder (module docstring), each file atomically (as genmodels.save)."""
    from .io import write_model_files
    from .nn.lora import refuse_adapters
    tokenizer = tokenizer or getattr(model.lm, "tokenizer", None)
    refuse_adapters(model.lm, "genmodels.reward.save_reward")

    def write(d: Path) -> None:
        write_model_files(model.lm, d, tokenizer)
        write_safetensors({"weight": model.score.weight.detach().cpu().contiguous()}, d / SCORE_FILE,
                          metadata={"format": "pt", "pad_token_id": json.dumps(model.pad_token_id)})

    return atomic_dir_write(Path(path), write, model.config, overwrite)


def load_reward(path: str | Path) -> RewardModel:
    """A reward model from a genmodels reward folder or a transformers LlamaForSequenceClassification folder (its
    tokenizer attached when the folder has one); anything else refused in one line naming the folder."""
    from .io import load
    from .registry import build_model
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder (a reward model is a folder)")
    if is_reward_folder(path):
        model = load_reward_hf(path, build_model)
        if (path / "tokenizer.json").is_file():
            from .data.tokenizer import load_tokenizer
            model.lm.tokenizer = load_tokenizer(path / "tokenizer.json")
        return model
    if not (path / SCORE_FILE).is_file():
        raise ValueError(f"{path} is not a reward model: it has no {SCORE_FILE} (a genmodels reward folder) and its "
                         "config.json does not name LlamaForSequenceClassification")
    lm = load(path)
    tensors = read_safetensors(path / SCORE_FILE)  # (a damaged file: one line naming it)
    from safetensors import safe_open
    with safe_open(str(path / SCORE_FILE), "pt") as f:
        meta = f.metadata() or {}
    model = RewardModel(lm, pad_token_id=json.loads(meta.get("pad_token_id", "null")))
    weight = tensors.get("weight")
    if weight is None or tuple(weight.shape) != tuple(model.score.weight.shape):
        raise ValueError(f"{path / SCORE_FILE}: want a tensor 'weight' of shape {tuple(model.score.weight.shape)}")
    with torch.no_grad():
        model.score.weight.copy_(weight)
    return model


@torch.no_grad()
def score(model: RewardModel, prompt: str, response: str, tokenizer=None, chat: bool = False) -> float:
    """The reward of ``response`` to ``prompt`` (module docstring)."""
    from .data.pairs import encode_reply
    from .data.tokenizer import eos_id
    tokenizer = tokenizer or getattr(model.lm, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("the reward model has no tokenizer (save it with one, or pass tokenizer=)")
    fields = ({"messages": [{"role": "user", "content": prompt}], "response": response} if chat else
              {"prompt": prompt, "response": response})
    template = getattr(model.lm, "chat_template", None) if chat else None
    eos = eos_id(tokenizer)
    variables = {"eos_token": tokenizer.id_to_token(eos)} if eos is not None else {}
    p, r = encode_reply(fields, tokenizer, eos, template, variables)
    ids = torch.tensor([p + r], device=next(model.parameters()).device)  # (1, T)
    last = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
    last[0, -1] = True  # the reply's last token (its EOS), as the reward objective reads it
    model.eval()
    return float(model(ids, last=last)[0])
