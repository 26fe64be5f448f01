"""Native prefill: a prompt through a decoder-only model in one native call per chunk (``gm_decoder_prefill``,
csrc/prefill.c), its keys and values written into the KV cache, the next-token logits of each row returned.

    ids (B, T) ─ embed (+ positions) ─ N × [x += Attn(Norm x) over cache slots [0, start + T);  x += FFN(Norm x)]
             ─ each row's last token ─ Norm ─ head ─▶ logits (B, V)

It computes what ``model.head(model.hidden_states(ids, attention_mask, cache=cache)[:, -1])`` computes (the
PyTorch path, kept as the reference: tests/native/test_prefill.py holds them equal to 1e-5 in fp32, logits
and cache), with the matrix products over all B·T rows as packed GEMMs (csrc/gemm.c: panels of W packed
on the fly, so quantised weights are dequantised one panel at a time and never copied whole) and attention
per (row, head, block of 64 queries). It reads the same struct as the decode step
(:class:`.decoder.FusedDecodeStep`), so it covers what the step covers — pre/post-norm, LayerNorm/RMSNorm,
learned/sinusoidal/RoPE/ALiBi positions, MHA/GQA/MQA, sliding windows, plain and gated MLPs, fp32 and GGUF
block weights — except sparse MoE feed-forwards, T5's relative bias and encoder–decoder models
(:func:`unsupported` names the reason; generation then prefills through PyTorch).

Rows of different lengths (left padding, ``attention_mask``) are handled: positions come from the cache
(``cache.advance``, as the PyTorch forward takes them), padded keys are masked, and a padding query attends
uniformly over the call's keys as PyTorch's ``finfo.min`` mask makes it (its slot is never read).
``GENMODELS_NATIVE_PREFILL=0`` turns it off (the decode step stays native), for A/B measurements.

**bf16** (opt-in: ``GENMODELS_NATIVE_PREFILL=bf16``, or ``prefill(..., bf16=True)``): the matrix products
round their two factors to bf16 and sum the products in fp32 (csrc/gemm_bf16.c, VDPBF16PS), on CPUs with
AVX512-BF16 only (AMD Zen 4, Intel Sapphire Rapids and later; :func:`bf16_unavailable` says why not
elsewhere); attention's Q Kᵀ and P V too. The softmax's sums, norms, activations and the head stay fp32. The
fp32 block linears' weights are packed once in bf16 in the kernel's panel layout (:func:`packed_weights`: half
their fp32 size, kept while the weight lives and is unchanged: same storage, version and sampled values,
:mod:`.watch`), so a prefill reads W in bf16 instead of converting it at every call; quantised weights are converted per call as in fp32.
The default stays fp32, as ``train.precision: auto`` does: bf16 changes the numbers (tests/native/test_prefill_bf16.py
holds them within the bound docs/native.md states).
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
import weakref

import torch
from torch import nn

from ..nn import KVCache, RelativePositionBias, SparseMoE
from . import ACTIVATIONS, library, never_raises, switch, watch
from .layout import hook_count
from .decoder import FusedDecodeStep, unsupported as step_unsupported

log = logging.getLogger(__name__)
ROWS = 512  # new tokens (B·T) per native call: a chunk's activations stay a few MB, its GEMMs near peak
PACK_BF16 = True  # bf16: read the fp32 weights packed once (packed_weights); False: convert W at every call (A/B)


def enabled() -> bool:
    """False when ``GENMODELS_NATIVE_PREFILL`` is 0/false/off/no (read at every prefill)."""
    return switch("GENMODELS_NATIVE_PREFILL") not in ("0", "false", "off", "no")


def bf16_requested() -> bool:
    """True when ``GENMODELS_NATIVE_PREFILL=bf16`` (read at every prefill)."""
    return switch("GENMODELS_NATIVE_PREFILL") == "bf16"


def bf16_unavailable(lib=None) -> str | None:
    """Why the prefill's products cannot run in bf16 here (``None``: they can): the kernels' build must
    target AVX512-BF16, which ``-march=native`` does on a CPU whose /proc/cpuinfo flags list ``avx512_bf16``."""
    lib = lib or library()
    if lib is None:
        return "the native kernels are not built"
    if lib.gm_prefill_bf16():
        return None
    from ..training.precision import cpu_flags
    have = "has avx512_bf16 but the kernels were built without it" if "avx512_bf16" in cpu_flags() else \
        "has no avx512_bf16 (AMD Zen 4, Intel Sapphire Rapids and later have it)"
    return f"GENMODELS_NATIVE_PREFILL=bf16 needs VDPBF16PS: this CPU {have}; allowed here: 1 (fp32) or 0"


_warned: set[str] = set()


def _use_bf16(bf16: bool | None, lib) -> bool:
    """bf16 asked for by argument (refused with the reason where unavailable) or by the environment (fp32,
    with the reason logged once, where unavailable)."""
    if bf16 is False or (bf16 is None and not bf16_requested()):
        return False
    reason = bf16_unavailable(lib)
    if reason is None:
        return True
    if bf16:
        raise ValueError(reason)
    if reason not in _warned:
        _warned.add(reason)
        log.warning("genmodels: %s; prefilling in fp32", reason)
    return False


def unsupported(model: nn.Module, cache=None) -> str | None:
    """Why ``model``'s prompts (into ``cache``, when given) cannot be prefilled natively (``None``: they can)."""
    if not enabled():
        return "native prefill turned off (GENMODELS_NATIVE_PREFILL=0)"
    if cache is not None and type(cache) is not KVCache:
        return f"the cache is a {type(cache).__name__}, not a KVCache"
    return remembered(model, "prefill", _model_unsupported)


def prefill_if_supported(model: nn.Module, cache, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """:func:`prefill`'s logits, or ``None`` (nothing done) where :func:`unsupported` gives a reason: one look at
    the model (:func:`_fingerprint`) for both (what the decode session calls)."""
    if not enabled() or type(cache) is not KVCache:
        return None
    memo = _memo(model)
    if remembered(model, "prefill", _model_unsupported, memo) is not None:
        return None
    return prefill(model, cache, input_ids, attention_mask, memo=memo)


def remembered(model: nn.Module, what: str, check, memo: dict | None = None):
    """``check(model)`` (a support check that never raises: :func:`_model_unsupported`, the decode step's
    ``native.step.unsupported``), computed once while the model is unchanged (:func:`_memo`; ``memo``: the one
    just looked up)."""
    memo = _memo(model) if memo is None else memo
    if what not in memo:
        memo[what] = check(model)
    return memo[what]


@never_raises
def _model_unsupported(model: nn.Module) -> str | None:
    from ..models.decoder import DecoderLM
    if not isinstance(model, DecoderLM) or type(model).hidden_states is not DecoderLM.hidden_states:
        return f"{type(model).__name__} is not a decoder-only DecoderLM with its forward"
    if "hidden_states" in vars(model):  # a wrapper set on the instance (a test's counter, a hook): it must run
        return "model.hidden_states is replaced on this instance"
    if (reason := step_unsupported(model)) is not None:
        return reason
    blocks, _, _, _, score_bias = model.decoder_view()
    for i, blk in enumerate(blocks):
        if type(blk.mlp) is SparseMoE:
            return f"block {i} has a sparse MoE feed-forward (the native prefill computes dense ones)"
    if type(score_bias) is RelativePositionBias:
        return "T5 relative position bias (the native prefill computes ALiBi only)"
    return None


_memos: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (_fingerprint, {"prefill"/"step": reason,
#   (batch, thread): struct}), gone with the model (as the native encoder's _CACHE)
_PLAIN = (int, float, str, bool, type(None))
_TORCH_OWN = frozenset(vars(nn.Module())) - {"training"}  # nn.Module's own bookkeeping (hooks; the dicts walked below)


def _fingerprint(model: nn.Module) -> list:
    """What the support checks and the model struct read, cheaply (~0.1 ms for a 4-layer Llama): the thread
    count (the struct's ``n_threads``), whether the kernels are on (``GENMODELS_NATIVE``), how many forward hooks
    there are (a hooked model runs the PyTorch path: :func:`.layout.hooked`), the config's fields, and for every
    module its identity, its attributes (plain values by value — an eps, an activation's name, a flag —, the rest
    by identity: a replaced config, a wrapper set on the instance; not nn.Module's own hook dicts) and the identity and
    data pointer of each parameter and buffer (a replaced
    module, ``p.data = …``, ``.to()``, quantisation all change one). Values edited in place are read by the
    kernels where they lie, so they need no entry."""
    out = [torch.get_num_threads(), id(library()), hook_count(model)]  # (library(): None under GENMODELS_NATIVE=0)
    add = out.append
    cfg = getattr(model, "config", None)
    for v in vars(cfg).values() if hasattr(cfg, "__dict__") else ():
        add(v if type(v) in _PLAIN else id(v))
    for mod in model.modules():
        d = mod.__dict__
        add(id(mod)), add(len(d))
        out += [v if type(v) in _PLAIN else id(v) for k, v in d.items() if k not in _TORCH_OWN]
        for group in (mod._parameters, mod._buffers):
            for t in group.values():
                add(id(t)), add(t.data_ptr() if t is not None else 0)
    return out


def _memo(model: nn.Module) -> dict:
    """What this module keeps for ``model`` — its support reason, its model structs — while :func:`_fingerprint`
    says it is the same model; a changed model starts an empty memo, a model's memo goes with it."""
    try:
        now = _fingerprint(model)
    except Exception:  # a model whose parts cannot be read cheaply: nothing is kept (the checks say why)
        return {}
    hit = _memos.get(model)
    if hit is not None and hit[0] == now:
        return hit[1]
    _memos[model] = (now, {})
    return _memos[model][1]


def _struct(model: nn.Module, cache, b: int, memo: dict | None = None) -> FusedDecodeStep:
    """The decode step's model struct for ``b`` rows (built once per model as it is, batch and thread: its
    build and its checks cost ~1 ms of a 15 ms prefill), pointed at ``cache``'s k/v buffers."""
    memo, key = _memo(model) if memo is None else memo, (b, threading.get_ident())
    step = memo.get(key)
    if step is None:
        step = FusedDecodeStep(model, cache, b)
        step.blocks = list(model.decoder_view()[0])
        step.weights = _block_weights(model, step)
        step.cache = step.keep_cache = step._check = None  # (the memo holds neither the cache nor the model)
        memo[key] = step
    FusedDecodeStep._check_cache(model, step.blocks, b, False, cache)  # the C code trusts these shapes
    for layer, lc in zip(step.layers, cache.layers):
        layer.k_cache, layer.v_cache = lc.k.data_ptr(), lc.v.data_ptr()
    step.model_struct.max_len = cache.max_len
    return step


def _inputs(cache, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, n_embed: int):
    """Checked (ids, padding mask (B, start + T) int64 or None) before anything moves."""
    b, t = input_ids.shape
    if t < 1:
        raise ValueError("native prefill needs at least one new token per row")
    if cache.batch != b:
        raise ValueError(f"the cache has {cache.batch} rows, input_ids {b}")
    if cache.pos + t > cache.max_len:
        raise ValueError(f"KV cache overflow: {cache.pos + t} positions > capacity {cache.max_len} (reserve first)")
    ids = input_ids.to("cpu", torch.long).contiguous()
    if int(ids.min()) < 0 or int(ids.max()) >= n_embed:
        raise ValueError(f"token ids must be in [0, {n_embed})")
    if attention_mask is None:
        return ids, None
    if tuple(attention_mask.shape) != (b, cache.pos + t):
        raise ValueError(f"attention_mask must be ({b}, {cache.pos + t}) (the cache's slots, then the new tokens), "
                         f"got {tuple(attention_mask.shape)}")
    mask = attention_mask.ne(0).to("cpu", torch.long).contiguous()
    return ids, None if bool(mask.all()) else mask


def prefill(model: nn.Module, cache, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
            rows: int = ROWS, lib=None, bf16: bool | None = None, *, memo: dict | None = None) -> torch.Tensor:
    """``input_ids (B, T)`` after what ``cache`` holds -> next-token logits ``(B, V)``; writes the keys and
    values at slots ``[cache.pos, cache.pos + T)`` and advances ``cache.pos`` and ``cache.row_pos`` as
    ``model.hidden_states(..., cache=cache)`` does. ``attention_mask (B, cache.pos + T)``: 1 = token, 0 =
    padding. ``rows``: new tokens per native call (B·T is cut into chunks of whole columns). The caller
    checks :func:`unsupported` first; a cache with too few slots is refused (``cache.reserve(T)`` first).
    ``lib``: another build of the kernels (tests of the AVX2 and scalar builds), else the loaded one. ``bf16``:
    the products in bf16 (None: as ``GENMODELS_NATIVE_PREFILL=bf16`` says; True where unavailable: ValueError).
    ``memo``: the model's memo just looked up (:func:`prefill_if_supported`), else looked up here."""
    from ..models.blocks import check_length
    b, t = input_ids.shape
    step = _struct(model, cache, b, memo)  # the model struct, bound to the cache's buffers
    ids, mask = _inputs(cache, input_ids, attention_mask, step.n_embed)
    start = cache.pos
    check_length(model.config, cache.offset + start + t)
    m, lib = step.model_struct, lib or step.lib
    use_bf16 = _use_bf16(bf16, lib)
    if m.pos_kind == 1 and int(cache.row_pos.max()) + t > step.pos_len:
        raise ValueError(f"position ids must be in [0, {step.pos_len}) (the position table)")
    positions = cache.advance(t, attention_mask, None).to("cpu", torch.long)  # (B, T); row_pos moves on
    positions = positions.expand(b, t).contiguous()
    m.mask_stride = mask.shape[1] if mask is not None else 0
    packed = packed_weights(model, step, lib) if use_bf16 and PACK_BF16 else None
    chunk, logits = max(1, rows // b), torch.empty(b, m.vocab, dtype=torch.float32)  # (B, V): the caller's own
    for c0 in range(0, t, chunk):
        tc = min(chunk, t - c0)
        cid, cpos = ids[:, c0:c0 + tc].contiguous(), positions[:, c0:c0 + tc].contiguous()
        scratch = _scratch(lib.gm_prefill_scratch_floats(ctypes.byref(m), b * tc, start + c0 + tc))
        rc = lib.gm_decoder_prefill(ctypes.byref(m), cid.data_ptr(), cpos.data_ptr(),
                                    mask.data_ptr() if mask is not None else None, start + c0, tc,
                                    scratch.data_ptr(), logits.data_ptr(), int(use_bf16), packed)
        if rc != 0:  # unsupported() refuses these models first; the C code checks again
            raise ValueError("gm_decoder_prefill refused the model (MoE, cross-attention or relative bias)"
                             if rc == -1 else "gm_decoder_prefill: this build has no bf16 products")
        cache.pos = start + c0 + tc
    return logits


_FIELDS = ("qkv", "out", "fc1", "fc2")  # the layer struct's block linears, in gm_decoder_prefill's order
_packed: dict[tuple, tuple] = {}  # (id(weight), gated) -> (weakref, watch.state, watch.Sample, packed u32 tensor)
_kept = threading.local()  # .scratch: this thread's largest scratch so far


def _scratch(floats: int) -> torch.Tensor:
    """The prefill's scratch (activations, attention scores, packing buffers), kept per thread between calls:
    a fresh one costs its pages' first-touch faults at every call (≈ 2% of a Llama-B prefill)."""
    buf = getattr(_kept, "scratch", None)
    if buf is None or buf.numel() < floats:
        _kept.scratch = buf = torch.empty(floats, dtype=torch.float32)
    return buf


def pack_bf16(w: torch.Tensor, lib=None, gated: bool = False) -> torch.Tensor:
    """``w (N, K)`` fp32 rounded to bf16 in the prefill kernel's panel layout (``gm_pack_bf16``: pairs of k per
    32-bit lane, NR-wide panels per K-block), as an int32 tensor of ``gm_bf16_packed_size(N, K)`` lanes.
    ``gated``: ``w`` is a gated MLP's fc1 (gate rows, then up rows; ``gm_pack_bf16_gated``): each panel holds
    NR/2 gate rows and the same NR/2 up rows, so the product's tiles can write SiLU(gate) · up themselves."""
    lib = lib or library()
    n, k = w.shape
    out = torch.empty(lib.gm_bf16_packed_size(n, k), dtype=torch.int32)
    pack = lib.gm_pack_bf16_gated if gated else lib.gm_pack_bf16
    if pack(w.data_ptr(), n // 2 if gated else n, k, out.data_ptr(), torch.get_num_threads()) != 0:
        raise ValueError(bf16_unavailable(lib) or f"{pack.__name__} refused")
    return out


def _packed_weight(w: torch.Tensor, lib, gated: bool = False) -> torch.Tensor:
    """:func:`pack_bf16` of ``w`` (``gated``: its gated layout), made once and reused while ``w`` lives unchanged
    (:mod:`.watch`: same storage and version — an optimizer step, ``load_state_dict``, ``copy_`` bump it — and the
    same sampled values, which in-place edits through ``w.data`` change without a bump): otherwise packed again."""
    key, now = (id(w), gated), watch.state(w)
    hit = _packed.get(key)
    if hit is not None and hit[0]() is w and hit[1] == now and hit[2].holds():
        return hit[3]
    if hit is None or hit[0]() is not w:
        weakref.finalize(w, _packed.pop, key, None)  # the packed copy goes with its weight
    out = pack_bf16(w, lib, gated)
    sample = watch.Sample(w, len(_packed), rows_every=8)  # every 8th row: ~1 ms a SmolLM2 prefill
    _packed[key] = (weakref.ref(w), now, sample, out)
    return out


def release() -> None:
    """Forget every bf16 packed weight (otherwise kept as long as its weight lives), every kept model struct and
    support reason, and this thread's scratch."""
    _packed.clear()
    _memos.clear()
    _kept.scratch = None


def _block_weights(model: nn.Module, step: FusedDecodeStep) -> list:
    """The fp32 weight of each block linear the step's struct points at (4 per layer: qkv, out, fc1, fc2), or
    None where it is quantised or not in the kernel's (N, K) contiguous layout."""
    m = step.model_struct
    qkv, att, ff = (m.n_heads + 2 * m.n_kv) * m.dh, m.n_heads * m.dh, (2 if m.gated else 1) * m.d_ff
    shapes = dict(zip(_FIELDS, ((qkv, m.d), (m.d, att), (ff, m.d), (m.d, m.d_ff))))  # (N, K) the kernel reads
    weights = {p.data_ptr(): p for p in model.parameters() if p.dim() == 2 and p.dtype == torch.float32}
    out = []
    for layer in step.layers:
        for f in _FIELDS:
            w = weights.get(getattr(layer, f + "_w")) if getattr(layer, f + "_t") == 0 else None
            out.append(w if w is not None and w.is_contiguous() and tuple(w.shape) == shapes[f] else None)
    return out


def packed_weights(model: nn.Module, step: FusedDecodeStep, lib):
    """For ``gm_decoder_prefill``: 5 pointers per layer (qkv, out, fc1, fc2, fc1 gated) to the bf16 panels of each
    fp32 block linear the step's struct points at (:func:`_packed_weight`), NULL for quantised ones. A SiLU-gated
    MLP's fc1 without bias (``gated_fc1``) is packed in the gated layout only (5th pointer; the 3rd NULL): its
    product then writes SiLU(gate) · up from its tiles (csrc/prefill.c fused_silu, the same conditions)."""
    weights = getattr(step, "weights", None) or _block_weights(model, step)  # (kept with a memoised struct)
    ptrs = []
    for i, layer in enumerate(step.layers):
        four = [_packed_weight(w, lib).data_ptr() if w is not None and (f != "fc1" or not gated_fc1(step, layer))
                else None for f, w in zip(_FIELDS, weights[4 * i:4 * i + 4])]  # None: per call
        fc1 = weights[4 * i + 2]
        gated = fc1 is not None and gated_fc1(step, layer)
        ptrs += four + [_packed_weight(fc1, lib, True).data_ptr() if gated else None]
    return (ctypes.c_void_p * len(ptrs))(*ptrs)


def gated_fc1(step: FusedDecodeStep, layer) -> bool:
    """Whether ``layer``'s fc1 takes the fused SiLU (csrc/prefill.c fused_silu): a gated MLP with SiLU, no fc1
    bias, and hidden units in whole half panels (16)."""
    m = step.model_struct
    return bool(m.gated) and m.act == ACTIVATIONS["silu"] and not layer.fc1_b and m.d_ff % 16 == 0
