"""Linear layers whose weight is kept in GGUF's block formats (Q8_0, Q4_0, Q4_1; Q6_K, Q4_K read from
files only, see :func:`_dequantize_k`): inference only.

    QuantizedLinear(in_features, out_features, bias, qtype)   blocks: uint8 (out, in / 32 · block bytes)

=====  ==================================  ================  ===========
qtype  block of 32 values                  value             bytes/block
=====  ==================================  ================  ===========
q8_0   fp16 d, 32 × int8 q                 q · d             34
q4_0   fp16 d, 16 bytes of nibbles         (q − 8) · d       18
q4_1   fp16 d, fp16 m, 16 bytes            q · d + m         20
=====  ==================================  ================  ===========

Nibbles: byte j holds value j (low 4 bits) and value j + 16 (high 4 bits) — the layouts of
``gguf/quants.py`` (and llama.cpp's ggml-quants.c), so a GGUF tensor's bytes are used as they lie in
the file. The PyTorch forward dequantises the whole matrix and multiplies in fp32 (the reference, and
the path on any CPU); the native decode step (csrc/quant.c) reads the blocks in place. Quantising
(:func:`quantize_rows`) rounds exactly as gguf-py's ``quantize`` does, byte for byte.

Training through a quantised weight is refused (the blocks hold rounded integers, there is no
gradient to follow): train the fp32 model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

QK = 32  # values per block (Q8_0, Q4_0, Q4_1)
QK_K = 256  # values per super-block (Q6_K, Q4_K: read from GGUF files, not written here)
BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20, "q6_k": 210, "q4_k": 144}
BLOCK_VALUES = {"q8_0": QK, "q4_0": QK, "q4_1": QK, "q6_k": QK_K, "q4_k": QK_K}
GGML_TYPES = {"q4_0": 2, "q4_1": 3, "q8_0": 8, "q4_k": 12, "q6_k": 14}  # GGML's type ids (also csrc/quant.h's)
QTYPES = ("q8_0", "q4_0", "q4_1")  # what quantize_rows writes
KQTYPES = ("q6_k", "q4_k")  # kept from a GGUF file only (no quantiser here)


def check_qtype(qtype: str) -> str:
    """``qtype`` lower-cased, or a one-line ValueError naming the formats there are."""
    q = str(qtype).lower()
    if q not in BLOCK_BYTES:
        raise ValueError(f"quantisation type {qtype!r} is not supported; use one of {', '.join(QTYPES)}")
    return q


def row_bytes(in_features: int, qtype: str) -> int:
    """Bytes of one row of ``in_features`` values (a multiple of the block size) in ``qtype`` blocks."""
    qk = BLOCK_VALUES[check_qtype(qtype)]
    if in_features % qk:
        raise ValueError(f"{in_features} input features are not a multiple of the {qtype} block size {qk}")
    return in_features // qk * BLOCK_BYTES[check_qtype(qtype)]


def _halves(b: torch.Tensor) -> torch.Tensor:
    """(..., 2) uint8 little-endian fp16 -> (..., 1) fp32."""
    return b.contiguous().view(torch.float16).float()


def dequantize_rows(blocks: torch.Tensor, qtype: str, in_features: int) -> torch.Tensor:
    """(N, row bytes) uint8 -> (N, in_features) fp32, as gguf-py's ``dequantize``."""
    qtype = check_qtype(qtype)
    if qtype in KQTYPES:
        return _dequantize_k(blocks, qtype, in_features)
    n = blocks.shape[0]
    b = blocks.reshape(n, in_features // QK, BLOCK_BYTES[qtype])  # (N, K/32, bytes)
    d = _halves(b[..., 0:2])
    if qtype == "q8_0":
        q = b[..., 2:].contiguous().view(torch.int8).float()
        return (q * d).reshape(n, in_features)
    qs = b[..., 4:] if qtype == "q4_1" else b[..., 2:]  # (N, K/32, 16)
    q = torch.cat([qs & 0x0F, qs >> 4], dim=-1)  # values 0..15 then 16..31
    if qtype == "q4_0":
        return ((q.to(torch.int8) - 8).float() * d).reshape(n, in_features)
    return (d * q.float() + _halves(b[..., 2:4])).reshape(n, in_features)


def _dequantize_k(blocks: torch.Tensor, qtype: str, in_features: int) -> torch.Tensor:
    """Q6_K / Q4_K super-blocks of 256 values -> (N, in_features) fp32, the operations of gguf-py's
    ``dequantize_blocks`` in its order (bit for bit).

    Q6_K (210 bytes): ql[128] (low nibbles), qh[64] (2 high bits), int8 scales[16], fp16 d;
      value h·128 + r (h < 2, r < 128): low = ql[h·64 + r % 64] >> 4·(r // 64) & 15,
      high = qh[h·32 + r % 32] >> 2·(r // 32) & 3, q = low | high << 4; y = (d · scales[v // 16]) · (q − 32).
    Q4_K (144 bytes): fp16 d, fp16 dmin, 12 bytes of 6-bit scales / mins (8 each), qs[128];
      value c·64 + h·32 + i: q = qs[c·32 + i] >> 4·h & 15; sub-block s = 2c + h: y = (d·sc[s])·q − dmin·m[s].
    """
    n = blocks.shape[0]
    b = blocks.reshape(n, in_features // QK_K, BLOCK_BYTES[qtype]).to(torch.int32)  # (N, B, bytes)
    if qtype == "q6_k":
        ql, qh, sc, d = b[..., :128], b[..., 128:192], b[..., 192:208], _halves(blocks.reshape(b.shape)[..., 208:210])
        low = (ql.reshape(n, -1, 2, 1, 64) >> torch.tensor([0, 4]).reshape(2, 1)) & 15  # (N, B, 2, 2, 64)
        high = (qh.reshape(n, -1, 2, 1, 32) >> torch.tensor([0, 2, 4, 6]).reshape(4, 1)) & 3  # (N, B, 2, 4, 32)
        q = (low.reshape(n, -1, 256) | (high.reshape(n, -1, 256) << 4)) - 32
        scale = d * (sc - (sc >> 7 << 8)).float()  # int8 scales; (N, B, 16)
        return (scale.unsqueeze(-1) * q.reshape(n, -1, 16, 16).float()).reshape(n, in_features)
    raw = blocks.reshape(b.shape)
    d, dmin, s = _halves(raw[..., 0:2]), _halves(raw[..., 2:4]), b[..., 4:16]
    lo, mn, md = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = torch.cat([lo & 0x3F, (md & 0x0F) | ((lo >> 2) & 0x30)], dim=-1).float()  # (N, B, 8)
    m = torch.cat([mn & 0x3F, (md >> 4) | ((mn >> 2) & 0x30)], dim=-1).float()
    q = (b[..., 16:].reshape(n, -1, 4, 1, 32) >> torch.tensor([0, 4]).reshape(2, 1)) & 15  # (N, B, 4, 2, 32)
    q = q.reshape(n, -1, 8, 32).float()
    return ((d * sc).unsqueeze(-1) * q - (dmin * m).unsqueeze(-1)).reshape(n, in_features)


def _roundf(v: torch.Tensor) -> torch.Tensor:
    """C's roundf (halves away from zero) in fp32, as gguf-py's ``np_roundf``."""
    a = v.abs()
    fl = a.floor()
    return torch.sign(v) * (fl + torch.floor(2 * (a - fl)))


def _inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d == 0, torch.zeros_like(d), 1 / torch.where(d == 0, torch.ones_like(d), d))


def _nibbles(q: torch.Tensor) -> torch.Tensor:
    """(…, 32) values 0..15 -> (…, 16) bytes: value j low, value j + 16 high."""
    return (q[..., :16] | (q[..., 16:] << 4)).to(torch.uint8)


def _half_bytes(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float16).contiguous().view(torch.uint8)  # (…, 1) -> (…, 2)


def quantize_rows(weight: torch.Tensor, qtype: str) -> torch.Tensor:
    """(N, K) float -> (N, row bytes) uint8 blocks, rounding as gguf-py (llama.cpp's reference) does."""
    qtype = check_qtype(qtype)
    if qtype not in QTYPES:
        raise ValueError(f"quantising to {qtype} is not supported (its blocks are read from GGUF files only); "
                         f"use one of {', '.join(QTYPES)}")
    n, k = weight.shape
    row_bytes(k, qtype)
    x = weight.detach().to("cpu", torch.float32).reshape(n, k // QK, QK)  # (N, K/32, 32)
    if qtype == "q8_0":
        d = x.abs().amax(-1, keepdim=True) / 127
        q = _roundf(x * _inverse(d)).to(torch.int8).view(torch.uint8)
        parts = [_half_bytes(d), q]
    elif qtype == "q4_0":
        mx = torch.gather(x, -1, x.abs().argmax(-1, keepdim=True))
        d = mx / -8
        q = torch.trunc(x * _inverse(d) + 8.5).clamp(0, 15).to(torch.int32)
        parts = [_half_bytes(d), _nibbles(q)]
    else:
        lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        d = (hi - lo) / 15
        q = torch.trunc((x - lo) * _inverse(d) + 0.5).clamp(0, 15).to(torch.int32)
        parts = [_half_bytes(d), _half_bytes(lo), _nibbles(q)]
    return torch.cat(parts, dim=-1).reshape(n, -1).contiguous()


class QuantizedLinear(nn.Module):
    """``y = x · dequantize(blocks)ᵀ + bias``; ``blocks`` a uint8 buffer (out, in / 32 · block bytes)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, qtype: str = "q8_0",
                 blocks: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features, self.qtype = in_features, out_features, check_qtype(qtype)
        shape = (out_features, row_bytes(in_features, self.qtype))
        if blocks is None:
            blocks = torch.zeros(shape, dtype=torch.uint8)
        elif blocks.dtype != torch.uint8 or tuple(blocks.shape) != shape:
            raise ValueError(f"{self.qtype} blocks must be uint8 {shape}, got {blocks.dtype} {tuple(blocks.shape)}")
        self.register_buffer("blocks", blocks.contiguous())
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Module, qtype: str) -> "QuantizedLinear":
        """A quantised copy of an ``nn.Linear``'s weight (its bias kept in fp32)."""
        w = linear.weight
        q = cls(w.shape[1], w.shape[0], bias=linear.bias is not None, qtype=qtype, blocks=quantize_rows(w, qtype))
        if linear.bias is not None:
            q.bias.data.copy_(linear.bias.detach().float())
        return q

    @property
    def ggml_type(self) -> int:
        """The GGML type id of the blocks (what the native step is told)."""
        return GGML_TYPES[self.qtype]

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight (out, in)."""
        return dequantize_rows(self.blocks, self.qtype, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            raise RuntimeError(training_refusal(type(self).__name__, self.qtype))
        w = self.dequantize().to(x.device, x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias is not None}, qtype={self.qtype}"


def training_refusal(where: str, qtype: str) -> str:
    return (f"{where} holds {qtype} blocks: quantised weights are for inference only (rounded integers have no "
            "gradient); train the fp32 model (genmodels.load without quantized=True), or call model.eval() / "
            "torch.no_grad() to run it")


def quantized_factory(qtype: str):
    """A linear factory (nn/linear.py) building :class:`QuantizedLinear` (zero blocks, filled by a load)."""
    qtype = check_qtype(qtype)

    def build(in_features: int, out_features: int, bias: bool = True, *, role: str = "", layer=None, slices=None):
        return QuantizedLinear(in_features, out_features, bias=bias, qtype=qtype)
    return build


def quantized_modules(model: nn.Module) -> list[tuple[str, QuantizedLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QuantizedLinear)]


def refuse_quantized(model: nn.Module, what: str) -> None:
    """A whole-model writer's check: quantised blocks are not the family's weights (its loaders read fp32
    ``weight`` keys), so writing them would give a folder that does not load back. One-line ``ValueError``."""
    mods = quantized_modules(model)
    if mods:
        more = f" and {len(mods) - 1} more" if len(mods) > 1 else ""
        raise ValueError(f"{what}: {mods[0][0]}{more} hold {mods[0][1].qtype} blocks (QuantizedLinear), which "
                         "genmodels' folders do not store; save the fp32 model (genmodels.load without quantized=True)")
