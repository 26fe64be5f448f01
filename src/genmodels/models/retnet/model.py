"""RetNetLM: the Retentive Network language model (Sun et al., 2023, arXiv 2307.08621; torchscale 0.3.0).

    x_0 = embed_scale · Embed(ids)                                     # (B, T, D); scale 1 unless set
    for each layer l:  x += MSR(RMSNorm(x))                            # multi-scale retention
                       x += GLU(RMSNorm(x)),  GLU(x) = fc2(act(fc1 x) ⊙ gate x)
    logits = head(RMSNorm(x))                                          # (B, T, V); a tied head: E (unscaled)

Training and ``forward`` use the parallel form. Generation goes through the cache protocol
(:mod:`genmodels.nn.kv_cache`): a :class:`RetentionCache` holds per layer the recurrent state
(S (B, H, d_k, d_v), s (B, H)); the prompt is prefilled in the parallel form (chunkwise beyond
``chunk_size``), which writes the state, then each token is one O(1) recurrent step — the state never
grows with the context. Left padding is exact: a padded row is prefilled alone on its real tokens, and
rows whose positions differ step alone, so pads never enter a state and each row's rotation counts its
own positions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...nn.embedding import TokenEmbedding
from ...nn.head import LMHead
from ...nn.masks import refusal
from ...nn.norm import RMSNorm
from ...nn.retention import MultiScaleRetention
from ..blocks import ModelParts
from .config import RetNetConfig

State = tuple[torch.Tensor, torch.Tensor]  # (S (B, H, d_k, d_v), s (B, H))
_ACT = {"gelu": F.gelu, "swish": F.silu}


class GLU(nn.Module):
    """torchscale's gated FFN without biases: fc2(act(fc1 x) ⊙ gate x).  (B, T, D) -> (B, T, D)."""

    def __init__(self, d_model: int, d_ff: int, activation: str):
        super().__init__()
        self.activation = activation
        self.fc1 = nn.Linear(d_model, d_ff, bias=False)
        self.gate = nn.Linear(d_model, d_ff, bias=False)
        self.fc2 = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(_ACT[self.activation](self.fc1(x)) * self.gate(x))

    def projection_roles(self) -> dict[str, str]:
        """HF roles of the linears (models/projections.py): fc1 is activated (Llama's gate), gate multiplies (up)."""
        return {"fc1": "gate", "gate": "up", "fc2": "down"}


class RetNetBlock(nn.Module):
    """Pre-norm: x += MSR(RMSNorm(x)); x += GLU(RMSNorm(x))."""

    def __init__(self, cfg: RetNetConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.retention = MultiScaleRetention(cfg.d_model, cfg.n_heads, cfg.value_dim, cfg.retention_eps,
                                             cfg.chunk_size)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = GLU(cfg.d_model, cfg.d_ff, cfg.activation)

    def residual_projections(self) -> list[nn.Module]:
        return [self.retention.out_proj, self.ffn.fc2]

    def forward(self, x: torch.Tensor, mode: str = "parallel", state: State | None = None,
                offset: int = 0) -> tuple[torch.Tensor, State]:
        y, state = self.retention(self.norm1(x), mode=mode, state=state, offset=offset)
        x = x + y
        return x + self.feed_forward(x), state

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The feed-forward branch (norm + GLU): the unit ``train.activation_checkpointing: ffn`` recomputes."""
        return self.ffn(self.norm2(x))


class RetentionCache:
    """The :class:`~genmodels.nn.kv_cache.DecodingCache` (protocol v2) of a RetNet: per layer the recurrent
    state (S (B, H, d_k, d_v), s (B, H)), or None before the first token. Its size is fixed: ``reserve`` does
    nothing. ``row_pos`` (B,): tokens each row has consumed (left-padded rows consumed fewer); ``pos``: the
    most any row has. Pads never enter a state, so ``key_mask`` stays None and rows of any lengths share it."""

    def __init__(self, n_layers: int, batch: int, limit: int | None = None):
        self.states: list[State | None] = [None] * n_layers
        self.pos, self.limit, self.key_mask = 0, limit, None
        self.row_pos = torch.zeros(batch, dtype=torch.long)

    def __getitem__(self, i: int) -> State | None:
        return self.states[i]

    def reserve(self, n: int) -> None:
        """Nothing to grow: the state has a fixed size."""

    def set_key_mask(self, mask: torch.Tensor) -> None:
        """Nothing to keep: the padded rows were prefilled on their real tokens only."""

    def select(self, rows: torch.Tensor) -> None:
        """Keep batch rows ``rows (R,)`` in that order (drop, reorder, repeat)."""
        self.states = [None if st is None else (st[0].index_select(0, rows.to(st[0].device)),
                                                st[1].index_select(0, rows.to(st[1].device)))
                       for st in self.states]
        self.row_pos = self.row_pos.index_select(0, rows.to(self.row_pos.device))

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (beam search): :meth:`select`."""
        self.select(index)

    def extend(self, other: RetentionCache) -> None:
        """Append the rows of ``other`` (a cache of the same model; consumed). Both must have consumed tokens."""
        if len(other.states) != len(self.states) or any(st is None for st in self.states + other.states):
            raise ValueError("extend: both RetNet caches must hold a state for every layer of the same model")
        self.states = [(torch.cat([a[0], b[0].to(a[0].device)]), torch.cat([a[1], b[1].to(a[1].device)]))
                       for a, b in zip(self.states, other.states)]
        self.row_pos = torch.cat([self.row_pos, other.row_pos.to(self.row_pos.device)])
        self.pos = max(self.pos, other.pos)
        self.limit = None if None in (self.limit, other.limit) else max(self.limit, other.limit)

    def state_bytes(self) -> int:
        """Bytes held by the states (constant in the number of tokens consumed)."""
        return sum(t.numel() * t.element_size() for st in self.states if st is not None for t in st)


class RetNetLM(nn.Module, ModelParts):
    """Embedding, N × RetNetBlock, final RMSNorm, LM head.  ``forward(ids (B, T)) -> logits (B, T, V)``."""

    family = "retnet"
    mask_rules = frozenset({"causal", "padding"})  # padding: a left-padded prefill through a cache

    def __init__(self, config: RetNetConfig):
        super().__init__()
        self.config = config
        self.embed = TokenEmbedding(config.vocab_size, config.d_model, scale=config.embed_scale)
        self.blocks = nn.ModuleList(RetNetBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = LMHead(config.d_model, config.vocab_size, tie_to=self.embed if config.tie_embeddings else None)

    # -- ModelParts ---------------------------------------------------------------------------------
    def transformer_blocks(self) -> list[nn.Module]:
        return list(self.blocks)

    # -- the stack ------------------------------------------------------------------------------------
    def _stack(self, ids: torch.Tensor, mode: str, states: list[State | None] | None,
               offset: int) -> tuple[torch.Tensor, list[State]]:
        """ids (B, T) from position ``offset`` -> (final-normed hidden (B, T, D), new per-layer states)."""
        x = self.embed(ids)                                                     # (B, T, D)
        out = []
        for i, block in enumerate(self.blocks):
            x, st = block(x, mode=mode, state=None if states is None else states[i], offset=offset)
            out.append(st)
        return self.norm(x), out

    def _mode(self, t: int) -> str:
        return "parallel" if t <= self.config.chunk_size else "chunkwise"

    def forward(self, input_ids: torch.Tensor, *, segment_ids: torch.Tensor | None = None,
                allowed: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) -> logits (B, T, V), parallel form. ``segment_ids``, ``allowed`` and ``inputs_embeds``
        are refused (retention's decay has no per-pair mask here): one-line ``ValueError``."""
        return self.head(self.hidden_states(input_ids, segment_ids=segment_ids, allowed=allowed,
                                            inputs_embeds=inputs_embeds))

    # -- the cache protocol ----------------------------------------------------------------------------
    def new_cache(self, batch: int, max_len: int | None = None, *, limit: int | None = None) -> RetentionCache:
        """An empty recurrent state for ``batch`` rows (``max_len`` needs no room: the size is fixed)."""
        return RetentionCache(len(self.blocks), batch, limit)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None,
                      cache: RetentionCache | None = None, *, segment_ids: torch.Tensor | None = None,
                      allowed: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T) -> (B, T, D). Without a cache: the parallel form over the whole sequence. With one:
        the T tokens continue each row's state (prefill: parallel/chunkwise; one token: a recurrent step)
        and ``cache.pos`` advances by T. A left-padded prefill (``attention_mask`` 0 on the leading pads)
        runs each padded row on its real tokens only; its pad rows of the output are zeros.
        ``segment_ids`` / ``allowed`` / ``inputs_embeds``: refused (see :attr:`mask_rules`). ``position_ids``:
        a row's positions are its own token count (``cache.row_pos`` onwards, pads skipped); others are refused."""
        if (reason := refusal("RetNetLM", self.mask_rules, segment_ids=segment_ids, allowed=allowed,
                              inputs_embeds=inputs_embeds)) is not None:
            raise ValueError(reason)
        if position_ids is not None:
            self._check_positions(position_ids, attention_mask, cache, input_ids.shape)
        if cache is None:
            if attention_mask is not None and not bool(attention_mask.all()):
                raise ValueError("attention_mask: RetNetLM's parallel forward takes no padding; "
                                 "pass a cache (generation) or unpadded rows")
            return self._stack(input_ids, self._mode(input_ids.shape[1]), None, 0)[0]
        b, t = input_ids.shape
        cache.row_pos = cache.row_pos.to(input_ids.device)
        real = None
        if cache.pos == 0 and attention_mask is not None and not bool(attention_mask.all()):
            real = attention_mask.to(input_ids.device).bool()                  # (B, T) left padding
        if real is None and bool((cache.row_pos == cache.row_pos[0]).all()):
            mode = "recurrent" if t == 1 else self._mode(t)
            h, cache.states = self._stack(input_ids, mode, cache.states, int(cache.row_pos[0]))
            cache.row_pos += t
        else:
            h = self._rows(input_ids, real, cache)
        cache.pos += t
        return h

    @staticmethod
    def _check_positions(position_ids: torch.Tensor, attention_mask, cache, shape) -> None:
        """The retention decay and rotation count each row's own tokens: ``position_ids`` must be those."""
        b, t = shape
        start = torch.zeros(b, 1, dtype=torch.long) if cache is None else cache.row_pos.reshape(b, 1).cpu()
        real = torch.ones(b, t, dtype=torch.long)
        if attention_mask is not None and (cache is None or cache.pos == 0):
            real = attention_mask[:, -t:].cpu().long()
        want = start + real.cumsum(-1) - 1
        given = position_ids.cpu().long().expand(b, t)
        if not bool(((given == want) | (real == 0)).all()):
            raise ValueError(f"position_ids: RetNetLM counts each row's own tokens (cache.row_pos onwards, pads "
                             f"skipped), here {want[:, :4].tolist()}…; it cannot take others — pass none")

    def _rows(self, ids: torch.Tensor, real: torch.Tensor | None, cache: RetentionCache) -> torch.Tensor:
        """Each row alone (its own real tokens and position): exact for left padding. (B, T) -> (B, T, D)."""
        b, t = ids.shape
        h = ids.new_zeros(b, t, self.config.d_model, dtype=self.embed.weight.dtype)
        rows: list[list[State]] = []
        for r in range(b):
            keep = real[r] if real is not None else torch.ones(t, dtype=torch.bool, device=ids.device)
            row_ids = ids[r:r + 1, keep]                                        # (1, t_r)
            n = row_ids.shape[1]
            states = [None if st is None else (st[0][r:r + 1], st[1][r:r + 1]) for st in cache.states]
            mode = "recurrent" if n == 1 else self._mode(n)
            hr, new = self._stack(row_ids, mode, states, int(cache.row_pos[r]))
            h[r, keep] = hr[0]
            rows.append(new)
            cache.row_pos[r] += n
        cache.states = [(torch.cat([row[i][0] for row in rows]), torch.cat([row[i][1] for row in rows]))
                        for i in range(len(self.blocks))]
        return h
