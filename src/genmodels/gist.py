"""Gist caching (Mu, Li, Goodman 2023): an instruction compressed into the keys and values of its ``k`` gist
tokens, kept instead of the instruction's own, reused for every input that follows it.

A model trained under the gist mask (:mod:`genmodels.nn.gist_mask`) reads the instruction only through
the gist positions. So :func:`compress` runs ``[instruction, <GIST> × k]`` through the model once (plain
causal attention: the gist tokens see the instruction, as in training) and keeps, per layer, the k gist
slots' keys and values and each row's next position. ``genmodels.generate(model, ids, cache=gist)`` then
decodes ``ids`` after the gist slots with positions continuing from ``gist_start + k``: the tokens and
logits of the full gist-masked forward (the instruction's keys, masked there, are simply absent here),
batched over different instructions (each row keeps its own next position, ``KVCache.row_pos``). A
:class:`GistCache` is reusable: each ``generate`` decodes in a fresh copy (:meth:`GistCache.decoding_cache`).

Encoder–decoders (T5): the gist's keys and values per *encoder* layer and its encoder outputs
(:mod:`genmodels.gist_seq2seq`); ``generate`` encodes the input against them and decodes over the memory of
the full masked forward. Refused, with the reason: schemes that read cache *slots* rather than positions
(ALiBi's distances; a sliding window shorter than what it must span) and RetNet (its state sums every
position: it cannot keep only the gist). A GistCache carries the fingerprint of the model that made
it (config and weights) and is refused for any other. Saved as one safetensors file: the tensors, and the
metadata as JSON in its header (``genmodels.gist``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .data.gist_examples import GIST_TOKEN
from .nn.gist_mask import MODES
from .nn.kv_cache import CHUNK, KVCache
FORMAT = 1
_META = "genmodels.gist"


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (what it hashed, the hash)


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the model's family, config and every tensor (name, shape, float32 value). Hashed again
    only when a tensor was replaced or changed in place (its storage or version counter moved) or the
    config changed, so a generate loop over one gist cache does not re-read the weights each call."""
    cfg = model.config
    fields = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else vars(cfg)
    head = f"{getattr(model, 'family', type(model).__name__)}|{json.dumps(fields, sort_keys=True, default=str)}"
    state = model.state_dict()
    key = (head, tuple((name, t.data_ptr(), t._version) for name, t in state.items()))
    seen = _FINGERPRINTS.get(model)
    if seen is not None and seen[0] == key:
        return seen[1]
    h = hashlib.sha256(head.encode())
    for name, t in state.items():
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    _FINGERPRINTS[model] = (key, h.hexdigest())
    return h.hexdigest()


def refusal(model: torch.nn.Module) -> str | None:
    """Why gist caching cannot serve ``model`` (one line), or ``None``."""
    family = getattr(model, "family", type(model).__name__)
    if _seq2seq(model):
        return None
    if not hasattr(model, "new_cache") or not isinstance(model.new_cache(1, 1), KVCache):
        return (f"gist caching needs a key/value cache; {family} keeps a recurrent state that sums every position, "
                "so it cannot keep the gist tokens alone")
    if getattr(model.config, "position", None) == "alibi":
        return ("gist caching: ALiBi biases scores by cache-slot distance, and dropping the instruction's slots "
                "changes those distances from what the model saw (position='alibi')")
    return None


def _seq2seq(model: torch.nn.Module) -> bool:
    from .registry import SEQ2SEQ, capabilities
    return SEQ2SEQ in capabilities(model)


@dataclass
class GistCache:
    """The cached slots of each row: ``keys[i]``, ``values[i]`` ``(B, H_kv, S, D)`` for attention layer i,
    ``next_pos (B,)`` (each row's gist start + k: the position of what follows), the making model's
    ``fingerprint``, for the record the instruction ``texts`` (or None), ``k`` (gist tokens) and ``mode``:
    what an input after it may see, as the mask of that name (:mod:`genmodels.nn.gist_mask`) — ``gist``: the k
    gist slots (S = k); ``pos_control``: instruction and gist (S = the longest |P| + k, ``key_mask (B, S)``
    marking each shorter row's front padding); ``neg_control``: nothing (S = 0, the positions only).
    Encoder–decoders: ``keys``/``values`` are the gist's per *encoder* layer and ``memory (B, S, D)`` its encoder
    outputs (:mod:`genmodels.gist_seq2seq`)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    next_pos: torch.Tensor
    fingerprint: str
    texts: list[str] | None = None
    k: int | None = None  # (None: the slots, the gist mode's k)
    mode: str = "gist"
    key_mask: torch.Tensor | None = None
    memory: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.k is None:
            self.k = self.slots

    @property
    def slots(self) -> int:
        """Cached positions per row and layer (the KV storage a prompt costs)."""
        return self.keys[0].shape[2]

    @property
    def batch(self) -> int:
        return self.next_pos.shape[0]

    def check_model(self, model: torch.nn.Module, where: str = "gist cache") -> None:
        """Refuse (ValueError, one line) a model other than the one that made this cache."""
        reason = refusal(model)
        if reason is not None:
            raise ValueError(reason)
        if model_fingerprint(model) != self.fingerprint:
            raise ValueError(f"{where} was made by another model (fingerprint {self.fingerprint[:12]}…, this model's "
                             f"{model_fingerprint(model)[:12]}…); compress the instruction with this model")

    def decoding_cache(self, model: torch.nn.Module, batch: int, need: int) -> KVCache:
        """A fresh :class:`KVCache` holding the gist slots for ``batch`` rows (one cache row repeats), with
        room for ``need`` more tokens; what :func:`genmodels.generate` continues (this cache stays as is)."""
        self.check_model(model)
        if self.memory is not None:
            raise ValueError("an encoder–decoder's gist cache holds encoder states, not a decoding cache: "
                             "use GistCache.encoded(model, input_ids) or genmodels.generate(model, ids, cache=gist)")
        if batch != self.batch and self.batch != 1:
            raise ValueError(f"input_ids has {batch} rows; the gist cache holds {self.batch} (one per row, or one "
                             "for every row)")
        window = model.config.sliding_window
        furthest = int(self.next_pos.max()) + need
        if window is not None and window < furthest:
            raise ValueError(f"gist caching: the sliding window ({window}) is shorter than the prompt it must span "
                             f"({furthest} positions), and a window counts cache slots, not positions")
        s = self.slots
        cache = model.new_cache(batch, s + min(need, CHUNK), limit=s + need)
        device = cache.row_pos.device
        with torch.inference_mode():
            for layer, key, value in zip(cache.layers, self.keys, self.values):
                layer.k[:, :, :s] = key.to(layer.k)
                layer.v[:, :, :s] = value.to(layer.v)
        cache.pos = s
        cache.row_pos = self.next_pos.to(device).expand(batch).clone()
        cache.offset = int(self.next_pos.max()) - s  # slot 0's position in the longest row (learned positions' check)
        if self.key_mask is not None and not bool(self.key_mask.all()):
            cache.set_key_mask(self.key_mask.to(device).expand(batch, s))
        return cache

    def encoded(self, model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Encoder–decoders: ``(memory, memory mask)`` of the inputs after this gist (:func:`.gist_seq2seq.encode_after`),
        what :func:`genmodels.generate` decodes over."""
        if self.memory is None:
            raise ValueError("this gist cache was made by a decoder-only model; generate continues its decoding_cache")
        from .gist_seq2seq import encode_after
        return encode_after(model, self, input_ids, attention_mask)

    def save(self, path: str | Path) -> Path:
        """Write one safetensors file: ``k.<i>``, ``v.<i>``, ``next_pos``; the rest as JSON metadata."""
        from safetensors.torch import save
        from .files import atomic_write_bytes
        tensors = {"next_pos": self.next_pos.cpu().contiguous()}
        for name in ("key_mask", "memory"):
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name).cpu().contiguous()
        for i, (key, value) in enumerate(zip(self.keys, self.values)):
            tensors[f"k.{i}"], tensors[f"v.{i}"] = key.cpu().contiguous(), value.cpu().contiguous()
        meta = {"format": FORMAT, "fingerprint": self.fingerprint, "layers": len(self.keys), "texts": self.texts,
                "k": self.k, "mode": self.mode}
        path = Path(path)
        check_gist_target(path)  # a folder, or a file that is not a gist cache, is never replaced
        atomic_write_bytes(path, save(tensors, metadata={_META: json.dumps(meta)}))  # never half a file
        return path

    @classmethod
    def load(cls, path: str | Path, model: torch.nn.Module | None = None) -> GistCache:
        """Read a file :meth:`save` wrote (refused, naming it, when it is not one); with ``model``, also
        refused for any model but the one that made it."""
        from .files import read_safetensors
        path = Path(path)
        tensors = read_safetensors(path)
        meta = _gist_meta(path)
        if meta is None:
            raise ValueError(f"{path}: not a gist cache (no {_META} metadata of format {FORMAT}); make one with "
                             "`genmodels compress`")
        n = int(meta["layers"])
        gist = cls([tensors[f"k.{i}"] for i in range(n)], [tensors[f"v.{i}"] for i in range(n)],
                   tensors["next_pos"], meta["fingerprint"], meta.get("texts"), meta.get("k"), meta.get("mode", "gist"),
                   tensors.get("key_mask"), tensors.get("memory"))
        if model is not None:
            gist.check_model(model, where=str(path))
        return gist


def _gist_meta(path: Path) -> dict | None:
    """The ``genmodels.gist`` metadata of a gist cache file (format :data:`FORMAT`); None for any other file."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get(_META) or "null")
    except Exception:  # noqa: BLE001 - safetensors' and json's errors for a file that is not ours
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def check_gist_target(path: str | Path, flag: str = "") -> Path:
    """Where :meth:`GistCache.save` may write ``path`` (through a symbolic link): a new file, or a gist cache
    (genmodels wrote it: its header holds ``genmodels.gist`` metadata). A folder, or any other file, is
    refused naming it (after ``flag``, e.g. ``--out``): genmodels never replaces a file it did not write."""
    from .files import write_target
    shown = f"{flag} {path}" if flag else str(path)
    target = write_target(path)
    if target.is_dir():
        raise FileExistsError(f"{shown} is a folder; give a gist cache file name (e.g. gist.safetensors)")
    if (target.exists() or target.is_symlink()) and _gist_meta(target) is None:
        raise FileExistsError(f"{shown} exists and is not a gist cache genmodels wrote; it is never replaced: "
                              "choose another name")
    return target


def _rows(model, instruction, gist_id: int | None) -> tuple[list[list[int]], int, list[str] | None]:
    """``(token ids per row, gist id, texts or None)`` of ``instruction``: text(s) or id list(s)."""
    tok = getattr(model, "tokenizer", None)
    texts = [instruction] if isinstance(instruction, str) else None
    if texts is None and isinstance(instruction, Sequence) and instruction and all(isinstance(s, str)
                                                                                  for s in instruction):
        texts = list(instruction)
    if texts is not None and tok is None:
        raise ValueError("compress: the model has no tokenizer (model.tokenizer), so a text instruction cannot be "
                         "encoded; pass token ids")
    if gist_id is None:
        gist_id = tok.token_to_id(GIST_TOKEN) if tok is not None else None
        if gist_id is None:
            raise ValueError(f"compress: the model's tokenizer has no {GIST_TOKEN} token; train it with "
                             "train.objective {name: gist} (genmodels.data.gist_examples) or pass gist_id=")
    if texts is not None:
        rows = [tok.encode(s).ids for s in texts]
    elif isinstance(instruction, torch.Tensor):
        rows = [instruction.tolist()] if instruction.dim() == 1 else instruction.tolist()
    else:  # ids, or a list of id lists (rows of different lengths)
        one = not instruction or isinstance(instruction[0], int)
        rows = [list(instruction)] if one else [list(r) for r in instruction]
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("compress: an instruction encodes to no tokens; give a non-empty instruction")
    return rows, int(gist_id), texts


@torch.inference_mode()
def compress(model: torch.nn.Module, instruction, *, k: int = 1, gist_id: int | None = None,
             mode: str = "gist") -> GistCache:
    """Compress ``instruction`` (a text, a list of texts, ids ``(T,)`` or a list of id lists — one row each)
    into a :class:`GistCache`: ``[instruction, gist_id × k]`` run once (rows left-padded), the last k slots
    of every layer kept with each row's next position. ``gist_id``: default the tokenizer's ``<GIST>``.
    ``mode``: what is kept, as the mask of that name — ``gist`` the k gist slots, ``pos_control`` every slot
    (the whole prompt), ``neg_control`` none (the positions only): a model trained under that mask decodes
    after it as under the full masked forward. Encoder–decoders: :func:`genmodels.gist_seq2seq.compress_seq2seq`
    (``pos_control`` refused there: nothing of the encoder can be computed before the input)."""
    reason = refusal(model)
    if reason is not None:
        raise ValueError(reason)
    if mode not in MODES:
        raise ValueError(f"compress: mode={mode!r}; expected one of {', '.join(MODES)}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"compress: k={k!r} gist tokens; expected an integer >= 1")
    rows, gist_id, texts = _rows(model, instruction, gist_id)
    if _seq2seq(model):
        from .gist_seq2seq import compress_seq2seq
        parts = compress_seq2seq(model, rows, gist_id, k, mode)
        return GistCache(parts["keys"], parts["values"], parts["next_pos"], model_fingerprint(model), texts, k, mode,
                         memory=parts["memory"])
    width = max(len(r) for r in rows) + k
    window = model.config.sliding_window
    if window is not None and window < width:
        raise ValueError(f"gist caching: the sliding window ({window}) is shorter than the instruction and its gist "
                         f"({width} tokens), and a window counts cache slots, not positions")
    device = next(model.parameters()).device
    ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):  # left-padded: the gist slots line up at the end of every row
        ids[i, width - len(r) - k:] = torch.tensor(r + [gist_id] * k, device=device)
        mask[i, width - len(r) - k:] = 1
    was = model.training
    model.eval()
    try:
        cache = model.new_cache(len(rows), width)
        model.hidden_states(ids, attention_mask=None if bool(mask.all()) else mask, cache=cache)
    finally:
        model.train(was)
    first = {"gist": width - k, "pos_control": 0, "neg_control": width}[mode]  # the slots kept: [first, width)
    keys = [layer.k[:, :, first:width].clone() for layer in cache.layers]
    values = [layer.v[:, :, first:width].clone() for layer in cache.layers]
    key_mask = mask[:, first:].clone() if mode == "pos_control" else None
    return GistCache(keys, values, cache.row_pos.clone(), model_fingerprint(model), texts, k, mode, key_mask)
