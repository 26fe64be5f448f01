"""The scale planner: what training a decoder preset on N GPUs costs, before anything is built.

For a config, a sequence length T, a per-device micro-batch B and N devices it gives

* parameters, total and (sparse MoE) active — :mod:`genmodels.models.flops`;
* training FLOPs per token, forward + backward (PaLM appendix B; nanoGPT's MFU estimate):
  ``6·N_matmul + 12·L·H·d·T`` (the attention scores and weighted sum are the second term);
* memory per device for weights, gradients and optimizer state (AdamW: two fp32 moments),
  in the precision's bytes per parameter (:data:`PRECISIONS`), divided by N under ZeRO-3 /
  FSDP (``zero="fsdp"``) or replicated (``zero="ddp"``);
* activations per device: what autograd saves for the backward pass in genmodels' decoder
  blocks (:func:`layer_activations`), counted term by term in the manner of Korthikanti et al.
  (2022, "Reducing Activation Recomputation in Large Transformer Models", §4.1), with or
  without full activation checkpointing;
* the time (and GPU-hours) a token budget takes at a given MFU on the GPU's peak (:data:`GPUS`).

Conventions and sources: docs/plan.md. Notation: D = d_model, F = d_ff (an expert's width for
MoE layers), H / H_kv query / key-value heads of width d, V the vocabulary, L layers, a the bytes of
an activation element (2 in bf16, 4 in fp32).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..models.config import ModelConfig
from ..models.flops import (active_parameter_count, flops_per_token, layer_parameter_count, matmul_parameters,
                            parameter_count)
from ..nn.mlp import GATED


@dataclass(frozen=True)
class GPU:
    """One accelerator: dense (no sparsity) peak FLOP/s and its memory as ``nvidia-smi`` reports it."""

    name: str
    bf16_tflops: float  # tensor-core bf16, dense
    fp32_tflops: float  # plain fp32 (no TF32): what a matmul in float32 runs at by default in PyTorch
    memory_gib: float
    source: str


# NVIDIA datasheets (the sparse figures halved to dense); memory as nvidia-smi's memory.total.
GPUS = {
    "a100": GPU("A100 SXM4 80GB", 312.0, 19.5, 80.0, "NVIDIA A100 datasheet (2021)"),
    "a100-40gb": GPU("A100 SXM4 40GB", 312.0, 19.5, 40.0, "NVIDIA A100 datasheet (2021)"),
    "h100": GPU("H100 SXM5 80GB", 989.0, 67.0, 79.6, "NVIDIA H100 datasheet (2023)"),
    "h100-pcie": GPU("H100 PCIe 80GB", 756.0, 51.0, 79.6, "NVIDIA H100 datasheet (2023)"),
    "h200": GPU("H200 SXM 141GB", 989.0, 67.0, 140.4, "NVIDIA H200 datasheet (2024)"),
}


@dataclass(frozen=True)
class Precision:
    """Bytes per parameter for weights, gradients and AdamW state, and per activation element."""

    name: str
    weight: int
    grad: int
    optimizer: int  # (fp32 master copy) + first and second moments
    activation: int
    note: str


PRECISIONS = {
    # ZeRO (Rajbhandari et al., 2020, §3.1): mixed-precision Adam keeps fp16/bf16 weights and gradients
    # (2 + 2 bytes) and fp32 master weights, momentum and variance (K = 12 bytes): 16 bytes per parameter.
    "bf16": Precision("bf16", 2, 2, 12, 2, "bf16 weights + grads, fp32 master + 2 moments (ZeRO: 2+2+12 B)"),
    "fp32": Precision("fp32", 4, 4, 8, 4, "fp32 weights + grads + 2 moments (4+4+8 B)"),
}
ZERO = ("fsdp", "ddp")
DEFAULT_MFU = 0.4


def _refuse_unplanned(cfg: ModelConfig) -> None:
    """The activation count below follows genmodels' decoder blocks; anything else is refused by name."""
    if not isinstance(cfg, ModelConfig) or cfg.family != "decoder":
        raise ValueError(f"genmodels plan covers decoder-only transformers (model.family=decoder); this config "
                         f"is family {getattr(cfg, 'family', type(cfg).__name__)!r}")
    if cfg.position not in ("rope", "learned", "none", "sinusoidal", "alibi"):
        raise ValueError(f"model.position={cfg.position!r} is not modelled by the planner")


def _norm(cfg: ModelConfig, a: int) -> int:
    """Bytes per token one norm keeps: RMSNorm its input in fp32 (it normalises an fp32 copy, HF's cast
    order), the fp32 inverse RMS and the normalised value (the scale's gradient needs it); LayerNorm
    its input and the fp32 mean and inverse standard deviation."""
    if cfg.norm == "rmsnorm":
        return 4 * cfg.d_model + 4 + a * cfg.d_model
    return a * cfg.d_model + 8


def _attention(cfg: ModelConfig, a: int) -> list[tuple[str, int]]:
    """Self-attention with a flash / memory-efficient kernel: nothing of size T² per layer."""
    d_model, h, hkv, d = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_head
    terms = [("attention: norm", _norm(cfg, a)), ("attention: qkv input", a * d_model)]
    if cfg.position == "rope":  # v copied into its own storage (nn/attention._own): qkv's output is not kept
        terms += [("attention: rotated q|k", a * (h + hkv) * d), ("attention: v (own copy)", a * hkv * d)]
    else:  # q, k, v are views of qkv's output: the kernel keeps it whole
        terms.append(("attention: q|k|v", a * (h + 2 * hkv) * d))
    terms.append(("attention: output (= out-proj input)", a * h * d))
    terms.append(("attention: softmax log-sum-exp (fp32)", 4 * h))
    if cfg.dropout > 0:
        terms.append(("attention: dropout mask (bool; CUDA's native_dropout)", d_model))
    return terms


def _dense_ffn(cfg: ModelConfig, a: int) -> list[tuple[str, int]]:
    """Gated: input, gate|up, the product (act(gate) is recomputed in the backward: nn/lean.py); plain:
    input, fc1's output (the activation's input; ReLU saves its output instead, which is fc2's input) and
    fc2's input."""
    f = cfg.d_ff
    if cfg.mlp in GATED:
        return [("ffn: input", a * cfg.d_model), ("ffn: gate|up", 2 * a * f), ("ffn: act(gate)*up", a * f)]
    return [("ffn: input", a * cfg.d_model), ("ffn: fc1 output", a * f)] + (
        [("ffn: act output", a * f)] if cfg.mlp != "relu" else [])


def _moe_ffn(cfg: ModelConfig, a: int) -> list[tuple[str, int]]:
    """Sparse MoE (nn/moe.py, dropless), per token: the router in fp32 (its input, logits and
    probabilities, kept again by the objective's balance and z losses), the picks, and for each of the
    k (token, expert) pairs the gathered input, the expert's gated-MLP terms, its output and gate."""
    d, e, k, f = cfg.d_model, cfg.n_experts, cfg.experts_per_token, cfg.expert_width
    return [("moe: router input (fp32)", 4 * d),
            ("moe: router logits, probabilities x2, log-sum-exp (fp32)", 3 * 4 * e + 4),
            ("moe: picks (int64), weights and their sum (fp32)", 8 * k + 4 * k + 4),
            ("moe: pair order, token of each pair (int64)", 2 * 8 * k),
            ("moe: gathered inputs", k * a * d),
            ("moe: experts' gate|up, act, product", k * 4 * a * f),
            ("moe: experts' outputs, gated outputs, gates", k * a * (2 * d + 1))]


def layer_activations(cfg: ModelConfig, layer_index: int, a: int) -> list[tuple[str, int]]:
    """``(term, bytes per token)`` that layer ``layer_index`` keeps for the backward pass, ``a`` bytes per
    activation element (residual adds keep nothing; the output projections' inputs are counted once,
    as the tensors that feed them)."""
    ffn = _moe_ffn(cfg, a) if cfg.is_moe_layer(layer_index) else _dense_ffn(cfg, a)
    terms = _attention(cfg, a) + [("ffn: norm", _norm(cfg, a))] + ffn
    return terms + ([("ffn: dropout mask (bool)", cfg.d_model)] if cfg.dropout > 0 else [])


@dataclass
class Activations:
    """Bytes one device keeps for one micro-batch of ``batch`` sequences of ``seq`` tokens."""

    layers: int  # every layer's saved tensors (no checkpointing)
    layer_inputs: int  # full checkpointing keeps only each layer's input (a·D per token per layer) ...
    recompute: int  # ... and holds one layer's saved tensors again while it recomputes it in backward
    outside: int  # embedding ids, RoPE tables, attention mask, final norm, the fused loss's gradients
    per_layer_terms: list[tuple[str, int]] = field(default_factory=list)  # layer 0, bytes per token

    @property
    def full(self) -> int:
        return self.layers + self.outside

    @property
    def with_checkpointing(self) -> int:
        return self.layer_inputs + self.recompute + self.outside


def activations(cfg: ModelConfig, seq: int, batch: int, a: int) -> Activations:
    """Activation bytes for ``batch`` sequences of ``seq`` tokens, ``a`` bytes per element."""
    n = seq * batch
    per_layer = [sum(b for _, b in layer_activations(cfg, i, a)) for i in range(cfg.n_layers)]
    d, v = cfg.d_model, cfg.vocab_size
    outside = 8 * n  # the token ids (int64), kept by the embedding lookup
    if cfg.position == "rope":  # cos and sin tables (B, 1, T, d_rot), shared by all layers
        outside += 2 * a * n * int(cfg.dim_head * cfg.rotary_fraction)
    window = cfg.sliding_window is not None and seq > cfg.sliding_window
    if window or cfg.position == "alibi":  # an additive mask (1, H|1, T, T), built once, kept by attention
        outside += a * seq * seq * (cfg.n_heads if cfg.position == "alibi" else 1)
    if cfg.dropout > 0:
        outside += n * d  # embedding dropout's mask
    if cfg.final_norm:
        outside += n * _norm(cfg, a)
    # the fused, chunked cross-entropy (objectives/losses.py) computes its gradients in the forward pass and
    # keeps them: dL/dh (N, D) and dL/dW (V, D) in fp32 (+ a bias's); the logits are never whole
    outside += a * n * d + 4 * v * d
    return Activations(layers=n * sum(per_layer), layer_inputs=n * a * d * cfg.n_layers, recompute=n * max(per_layer),
                       outside=outside, per_layer_terms=layer_activations(cfg, 0, a))


def training_flops_per_token(cfg: ModelConfig, seq: int, attention: bool = True) -> float:
    """Forward + backward FLOPs per token at sequence length ``seq``: ``6·N_matmul + 12·L·H·d·T``
    (MoE: the active experts' weights), or ``6·N_matmul`` alone with ``attention=False``. Recomputation
    under activation checkpointing is not counted (MFU, not hardware FLOPs utilisation)."""
    return flops_per_token(cfg, seq, training=True) if attention else 6.0 * matmul_parameters(cfg)


def peak_flops(gpu: str, precision: str) -> float:
    """Peak FLOP/s of ``gpu`` (a key of :data:`GPUS`) in ``precision`` (bf16 tensor cores or plain fp32)."""
    g = _choice(GPUS, gpu, "--gpu")
    return 1e12 * (g.bf16_tflops if _choice(PRECISIONS, precision, "--precision").name == "bf16" else g.fp32_tflops)


def fit_mfu(cfg: ModelConfig, *, seq: int, tokens: float, gpu_hours: float, gpu: str = "a100",
            precision: str = "bf16", attention: bool = True) -> float:
    """The MFU a reported run implies: ``tokens · FLOPs/token / (GPU-hours · 3600 · peak)``."""
    return tokens * training_flops_per_token(cfg, seq, attention) / (gpu_hours * 3600 * peak_flops(gpu, precision))


def _choice(table: dict, key: str, flag: str):
    if key not in table:
        raise ValueError(f"{flag} {key!r}: choose one of {', '.join(table)}")
    return table[key]


@dataclass
class Plan:
    """What training ``name`` costs: counts, FLOPs, memory per device (bytes), time for ``tokens``."""

    name: str
    gpus: int
    seq: int
    batch: int  # sequences per device per step (micro-batch)
    zero: str
    checkpointing: bool
    precision: str
    gpu: str
    mfu: float
    tokens: float
    parameters: int
    active_parameters: int
    flops_per_token: float  # with the attention term
    flops_per_token_6n: float  # 6·N_matmul alone
    weights: int
    gradients: int
    optimizer: int
    activations: Activations
    buffers: int  # FSDP's all-gathered blocks and root, or DDP's gradient buckets
    buffers_note: str

    @property
    def activation_bytes(self) -> int:
        return self.activations.with_checkpointing if self.checkpointing else self.activations.full

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activation_bytes + self.buffers

    @property
    def memory_gib(self) -> float:
        return GPUS[self.gpu].memory_gib

    @property
    def tokens_per_second(self) -> float:
        """Whole-cluster training throughput at ``mfu``."""
        return self.gpus * peak_flops(self.gpu, self.precision) * self.mfu / self.flops_per_token

    @property
    def seconds(self) -> float:
        return self.tokens / self.tokens_per_second

    @property
    def gpu_hours(self) -> float:
        return self.seconds * self.gpus / 3600

    def to_dict(self) -> dict:
        out = asdict(self)
        out["activations"] = {"full": self.activations.full, "with_checkpointing": self.activations.with_checkpointing,
                              "per_layer_bytes_per_token": dict(self.activations.per_layer_terms)}
        out.update(activation_bytes=self.activation_bytes, total_bytes=self.total, device_memory_gib=self.memory_gib,
                   tokens_per_second=self.tokens_per_second, seconds=self.seconds, gpu_hours=self.gpu_hours,
                   precision_convention=PRECISIONS[self.precision].note, gpu_name=GPUS[self.gpu].name)
        return out


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:,.2f} GiB"


def _si(x: float, giga: str = "G") -> str:
    """1.23 T / 45.6 G / 7.8 M: a count in SI steps (``giga="B"`` for token counts)."""
    for scale, unit in ((1e12, "T"), (1e9, giga), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:,.2f} {unit}"
    return f"{x:,.0f}"


def format_plan(pl: Plan) -> str:
    """The plan as the lines ``genmodels plan`` prints."""
    g, p = GPUS[pl.gpu], PRECISIONS[pl.precision]
    act = pl.activations
    lines = [
        f"{pl.name} on {pl.gpus} x {g.name}: seq {pl.seq}, batch {pl.batch} per device "
        f"({pl.gpus * pl.batch * pl.seq:,} tokens per step), {'ZeRO-3 / FSDP' if pl.zero == 'fsdp' else 'DDP'}, "
        f"{'full activation checkpointing' if pl.checkpointing else 'no activation checkpointing'}, {pl.precision}",
        f"parameters        {pl.parameters:,}" + (f"  (active per token {pl.active_parameters:,})"
                                                  if pl.active_parameters != pl.parameters else ""),
        f"FLOPs/token       {_si(pl.flops_per_token)}  (forward+backward: 6N {_si(pl.flops_per_token_6n)} + "
        f"attention 12·L·H·d·T {_si(pl.flops_per_token - pl.flops_per_token_6n)})",
        f"memory per device ({p.note}; {'sharded over ' + str(pl.gpus) if pl.zero == 'fsdp' else 'replicated'})",
        f"  weights         {_gib(pl.weights)}",
        f"  gradients       {_gib(pl.gradients)}",
        f"  optimizer state {_gib(pl.optimizer)}",
        f"  activations     {_gib(pl.activation_bytes)}  (without checkpointing {_gib(act.full)}, "
        f"with {_gib(act.with_checkpointing)})",
    ]
    if pl.buffers:
        lines.append(f"  buffers         {_gib(pl.buffers)}  ({pl.buffers_note})")
    verdict = "fits" if pl.total <= g.memory_gib * 2 ** 30 else "does NOT fit"
    lines.append(f"  total           {_gib(pl.total)} of {g.memory_gib:g} GiB: {verdict}")
    peak = peak_flops(pl.gpu, pl.precision) / 1e12
    lines.append(f"time for {_si(pl.tokens, 'B')} tokens at MFU {pl.mfu:.3g} of {peak:g} TFLOP/s ({pl.precision}): "
                 f"{pl.seconds / 3600:,.1f} h ({pl.gpu_hours:,.0f} GPU-hours), {pl.tokens_per_second:,.0f} tokens/s")
    return "\n".join(lines)


def _buffers(cfg: ModelConfig, zero: str, gpus: int, p: Precision) -> tuple[int, str]:
    """Memory the data-parallel engine adds. FSDP2 (fully_shard per block, then the root): the root's
    parameters (embedding, final norm, head) stay gathered from forward to backward, and about two blocks
    are gathered at once (the current and the prefetched next), with one block's unsharded gradients
    before the reduce-scatter. DDP: its gradient buckets, a second copy of the gradients (PyTorch's
    default gradient_as_bucket_view=False)."""
    if gpus == 1:
        return 0, "one device: no data-parallel buffers"
    if zero == "ddp":
        return parameter_count(cfg) * p.grad, "DDP gradient buckets (a second copy of the gradients)"
    block = max(layer_parameter_count(cfg, i) for i in range(cfg.n_layers))
    root = parameter_count(cfg) - sum(layer_parameter_count(cfg, i) for i in range(cfg.n_layers))
    return ((root + 2 * block) * p.weight + (root + block) * p.grad,
            "FSDP gathered root + 2 blocks and their unsharded gradients (estimate)")


def plan(cfg: ModelConfig, *, gpus: int, seq: int | None, batch: int, zero: str = "fsdp",
         checkpointing: bool = False, tokens: float = 1e9, mfu: float = DEFAULT_MFU, gpu: str = "a100",
         precision: str = "bf16", name: str = "config") -> Plan:
    """The :class:`Plan` for training ``cfg`` on ``gpus`` devices, ``batch`` sequences of ``seq`` tokens
    per device per step, ZeRO-3/FSDP sharding (``zero="fsdp"``: weights, gradients and optimizer state
    divided by ``gpus``) or DDP (replicated), full activation checkpointing or none, ``tokens`` to
    train at ``mfu`` of ``gpu``'s peak in ``precision``; ``seq=None``: the model's context."""
    _refuse_unplanned(cfg)
    seq = cfg.max_seq_len if seq is None else seq  # (None only: --seq 0 is refused below, never the default)
    p = _choice(PRECISIONS, precision, "--precision")
    _choice(GPUS, gpu, "--gpu")
    _choice({z: z for z in ZERO}, zero, "--zero")
    for flag, value in (("--gpus", gpus), ("--seq", seq), ("--batch", batch)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{flag} {value!r}: give a whole number of at least 1")
    if seq > cfg.max_seq_len:
        raise ValueError(f"--seq {seq} exceeds the model's context (model.max_seq_len={cfg.max_seq_len})")
    if not 0 < mfu <= 1:
        raise ValueError(f"--mfu {mfu}: give a fraction in (0, 1]")
    if not tokens > 0:
        raise ValueError(f"--tokens {tokens}: give a positive number of tokens")
    n = parameter_count(cfg)
    shard = gpus if zero == "fsdp" else 1
    buffers, note = _buffers(cfg, zero, gpus, p)
    return Plan(name=name, gpus=gpus, seq=seq, batch=batch, zero=zero, checkpointing=checkpointing,
                precision=p.name, gpu=gpu, mfu=mfu, tokens=tokens, parameters=n,
                active_parameters=active_parameter_count(cfg),
                flops_per_token=training_flops_per_token(cfg, seq),
                flops_per_token_6n=training_flops_per_token(cfg, seq, attention=False),
                weights=-(-n * p.weight // shard), gradients=-(-n * p.grad // shard),
                optimizer=-(-n * p.optimizer // shard), activations=activations(cfg, seq, batch, p.activation),
                buffers=buffers, buffers_note=note)
