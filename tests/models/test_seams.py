"""The seams in the transformer (issue #9, deliverable 3): parts passed into blocks, injected
projections, per-row allowed pairs in the mask, the cache protocol generation relies on (held by
a recurrent state standing in for a KV cache), parts named by methods, the tokenizer attribute."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import genmodels
from genmodels.models.blocks import PreNormBlock, build_block
from genmodels.nn import AttentionInputs, SelfAttention, build_mask
from genmodels.nn.kv_cache import CachingModel, DecodingCache
from genmodels.training.memory import apply_activation_checkpointing, transformer_blocks
from tests.helpers.tiny import random_ids, randomise, tiny_config, tiny_model

MIN = torch.finfo(torch.float32).min


# ---- (a) the block builder takes its token mixer and feed-forward as parts ------------------------
class _Zero(nn.Module):
    """A part that contributes nothing: a pre-norm block of two of them is the identity."""

    def forward(self, x, ctx=None, cache=None):
        return torch.zeros_like(x)


def test_build_block_uses_the_mixer_and_ffn_passed_in():
    c = tiny_config("llama")
    seen = []

    def mixer(config, layer_index):
        seen.append(("mixer", layer_index))
        return _Zero()

    def ffn(config, layer_index):
        seen.append(("ffn", layer_index))
        return _Zero()

    block = build_block(c, 3, mixer=mixer, ffn=ffn)
    assert seen == [("mixer", 3), ("ffn", 3)]
    assert isinstance(block, PreNormBlock) and isinstance(block.mixer, _Zero) and isinstance(block.ffn, _Zero)
    x = torch.randn(2, 5, c.d_model)
    torch.testing.assert_close(block(x, AttentionInputs()), x)  # both parts in the residual path


def test_build_block_default_parts_keep_the_state_dict_keys():
    c = tiny_config("llama")
    keys = set(build_block(c, 0).state_dict())
    assert keys == {"norm1.weight", "norm2.weight", "attn.qkv.weight", "attn.out.weight", "mlp.gate_up.weight",
                    "mlp.down.weight"}


# ---- (b) SelfAttention takes injected projections ---------------------------------------------------
class _Scaled(nn.Module):
    """A wrapper around a linear (as an adapter or a quantised linear would be): base(x) · s."""

    def __init__(self, base: nn.Linear, s: float):
        super().__init__()
        self.base, self.s = base, s

    def forward(self, x):
        return self.base(x) * self.s


def test_self_attention_uses_injected_projections():
    torch.manual_seed(0)
    plain = SelfAttention(32, 4, 2, 8, bias=True)
    wrapped = SelfAttention(32, 4, 2, 8, qkv=_Scaled(plain.qkv, 1.0), out=_Scaled(plain.out, 2.0))
    assert wrapped.qkv.base is plain.qkv and wrapped.out.base is plain.out
    x, ctx = torch.randn(2, 6, 32), AttentionInputs(is_causal=True)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x, ctx), 2.0 * plain(x, ctx))


# ---- (c) per-row allowed pairs in the mask -------------------------------------------------------------
def _hand_made_packed_mask() -> torch.Tensor:
    """Row 0: documents [0, 1, 2] and [3, 4] packed; row 1: one document [0 … 3] and a pad at 4.
    Causal within each document; the pad key hidden."""
    visible = torch.zeros(2, 5, 5, dtype=torch.bool)
    for i in range(5):
        for j in range(i + 1):
            visible[0, i, j] = (i < 3) == (j < 3)
            visible[1, i, j] = j < 4
    return torch.zeros(2, 1, 5, 5).masked_fill(~visible[:, None], MIN)


def test_build_mask_combines_allowed_pairs_with_causal_and_padding():
    doc = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]])
    allowed = doc[:, :, None] == doc[:, None, :]  # (B, T, S): same document
    mask, is_causal = build_mask(5, 5, causal=True, key_padding=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]),
                                 allowed=allowed)
    assert not is_causal
    torch.testing.assert_close(mask, _hand_made_packed_mask())


def test_build_mask_allowed_pairs_alone_leave_the_mask_free_path():
    allowed = torch.ones(1, 4, 4, dtype=torch.bool)
    allowed[0, 3, 0] = False  # e.g. a gist mask: the last query may not see the first key
    mask, is_causal = build_mask(4, 4, causal=True, allowed=allowed)
    assert mask is not None and not is_causal
    want = torch.zeros(1, 1, 4, 4).masked_fill(~torch.ones(4, 4, dtype=torch.bool).tril(), MIN)
    want[0, 0, 3, 0] = MIN
    torch.testing.assert_close(mask, want)


# ---- (d) the cache protocol (v2), held by a recurrent state ------------------------------------------
class _SumState:
    """One layer's recurrent state: the running sum of its inputs ``(B, 1, D)`` and each row's count."""

    def __init__(self, batch: int, d: int):
        self.total = torch.zeros(batch, 1, d)
        self.count = torch.zeros(batch, 1, 1)


class _RecurrentCache:
    """A :class:`DecodingCache` (v2) of fixed size: per-layer sums, no slots to grow, rows of any length."""

    def __init__(self, n_layers: int, batch: int, d: int):
        self.layers = [_SumState(batch, d) for _ in range(n_layers)]
        self.pos, self.key_mask, self.limit, self.reserved = 0, None, None, 0
        self.row_pos = torch.zeros(batch, dtype=torch.long)

    def __getitem__(self, i: int) -> _SumState:
        return self.layers[i]

    def reserve(self, n: int) -> None:
        self.reserved += n  # nothing to grow: the state has a fixed size

    def set_key_mask(self, mask: torch.Tensor) -> None:
        raise AssertionError("the toy takes no padding")

    def select(self, rows: torch.Tensor) -> None:
        for layer in self.layers:
            layer.total, layer.count = layer.total.index_select(0, rows), layer.count.index_select(0, rows)
        self.row_pos = self.row_pos.index_select(0, rows)

    def reorder(self, index: torch.Tensor) -> None:
        self.select(index)

    def extend(self, other: "_RecurrentCache") -> None:
        for mine, theirs in zip(self.layers, other.layers):
            mine.total, mine.count = torch.cat([mine.total, theirs.total]), torch.cat([mine.count, theirs.count])
        self.row_pos = torch.cat([self.row_pos, other.row_pos])
        self.pos = max(self.pos, other.pos)


class _RunningMean(nn.Module):
    """Token mixer y_t = W · mean(x_1 … x_t): causal, and recurrent through its running sum and count."""

    def __init__(self, c, layer_index: int = 0):
        super().__init__()
        self.proj = nn.Linear(c.d_model, c.d_model)

    def forward(self, x, ctx, cache: _SumState | None = None):
        total = x.cumsum(1)  # (B, T, D)
        count = torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[None, :, None]  # (1, T, 1)
        if cache is not None:
            total, count = total + cache.total, count + cache.count  # each row continues its own sum
            cache.total, cache.count = total[:, -1:], count[:, -1:]
        return self.proj(total / count)


class _RunningMeanLM(genmodels.models.decoder.DecoderLM):
    """A decoder whose blocks mix tokens by a running mean: its cache is a recurrent state."""

    def __init__(self, c):
        super().__init__(c)
        self.blocks = nn.ModuleList(build_block(c, i, mixer=_RunningMean) for i in range(c.n_layers))
        self.pos_embed = None  # the running mean carries the order

    def new_cache(self, batch, max_len=None, *, limit=None):
        return _RecurrentCache(len(self.blocks), batch, self.config.d_model)

    def hidden_states(self, input_ids, attention_mask=None, position_ids=None, cache=None, **inputs):
        assert not any(v is not None for v in inputs.values())  # inputs_embeds, segment_ids, allowed: not here
        start = cache.pos if cache is not None else 0
        x = self.embed(input_ids)  # (B, T, D)
        ctx = AttentionInputs(start=start)
        for i, block in enumerate(self.blocks):
            x = block(x, ctx, cache[i] if cache is not None else None)
        if cache is not None:
            cache.pos = start + input_ids.shape[1]
            cache.row_pos = cache.row_pos + input_ids.shape[1]
        return self.norm(x)


def _toy():
    return randomise(_RunningMeanLM(tiny_config("gpt2", eos_token_id=None))).eval()


def _greedy_by_full_forwards(model, ids, n):
    with torch.no_grad():
        for _ in range(n):  # the definition: the whole sequence again each step, no state kept
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_generate_runs_through_a_recurrent_state_in_place_of_a_kv_cache():
    model = _toy()
    assert isinstance(model, CachingModel) and isinstance(model.new_cache(1), DecodingCache)
    prompt = random_ids(2, 5)
    out = genmodels.generate(model, prompt, max_new_tokens=8)
    assert out.shape == (2, 13)
    torch.testing.assert_close(out, _greedy_by_full_forwards(model, prompt, 8))


def test_the_toy_cache_continues_and_holds_rows_of_different_lengths():
    """Protocol v2 on the toy: generate(ids2, cache=prefix(ids1)) == generate(ids1 + ids2); a session whose
    rows join and leave at different steps gives each row what it gives alone."""
    from genmodels.generation import DecodeSession, Sampling
    model, ids = _toy(), random_ids(2, 9)
    _, cache = genmodels.generate(model, ids[:, :4], 0, return_cache=True)
    assert cache.pos == 4 and cache.row_pos.tolist() == [4, 4]
    out, cache = genmodels.generate(model, ids[:, 4:], 6, cache=cache, return_cache=True)
    assert torch.equal(out, genmodels.generate(model, ids, 6)[:, 4:]) and cache.row_pos.tolist() == [15, 15]
    session = DecodeSession(model)
    a = session.add(ids[:1, :3], Sampling(max_new_tokens=7))
    session.step(), session.step()
    b = session.add(ids[1:, :6], Sampling(max_new_tokens=3))
    while session.requests:
        session.step()
    assert torch.equal(a.output, _greedy_by_full_forwards(model, ids[:1, :3], 7))
    assert torch.equal(b.output, _greedy_by_full_forwards(model, ids[1:, :6], 3))


# ---- (e) parts named by methods ------------------------------------------------------------------------
def test_models_name_their_blocks_and_parts():
    dec = tiny_model("llama")
    assert dec.transformer_blocks() == list(dec.blocks) == dec.blocks_for_checkpointing()
    assert dec.embedding() is dec.embed and dec.output_head() is dec.head
    t5 = genmodels.build_model(genmodels.preset("t5-tiny", vocab_size=64, n_layers=2, n_decoder_layers=3))
    assert transformer_blocks(t5) == [*t5.enc_blocks, *t5.dec_blocks]  # what checkpointing and FSDP wrap
    assert t5.decoder_view().blocks is t5.dec_blocks
    bert = genmodels.build_model(genmodels.preset("bert-tiny", vocab_size=64, n_layers=2))
    assert bert.output_head() is bert.mlm and bert.transformer_blocks() == list(bert.blocks)


def test_activation_checkpointing_wraps_every_named_block_of_a_seq2seq_model():
    t5 = genmodels.build_model(genmodels.preset("t5-tiny", vocab_size=64, n_layers=1, n_decoder_layers=2))
    apply_activation_checkpointing(transformer_blocks(t5), "full")
    wrapped = [b for b in [*t5.enc_blocks, *t5.dec_blocks] if "forward" in b.__dict__]
    assert len(wrapped) == 3


def test_a_model_that_names_no_blocks_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^Linear does not name its blocks \(blocks_for_checkpointing\(\)\)"):
        transformer_blocks(nn.Linear(2, 2))


def test_native_decoder_refuses_a_decoder_that_names_no_parts():
    from genmodels.native.decoder import unsupported

    class Bare(nn.Module):
        family = "decoder"

    reason = unsupported(Bare())
    assert reason is not None and "decoder_view()" in reason


# ---- (f) the tokenizer is an explicit attribute ---------------------------------------------------------
class _Tok:
    def __init__(self, name: str):
        self.name = name


def test_tokenizer_is_an_explicit_attribute_that_survives_deepcopy():
    model = tiny_model("gpt2")
    assert model.tokenizer is None  # by default, without guessing in __dict__
    model.tokenizer = _Tok("bpe")
    assert "tokenizer" not in dict(model.named_modules()) and not any("tok" in k for k in model.state_dict())
    twin = copy.deepcopy(model)
    assert isinstance(twin.tokenizer, _Tok) and twin.tokenizer.name == "bpe"


class _Doubling(nn.Module):
    """A feed-forward of a new kind that names its own output projection."""

    def __init__(self, c, layer_index: int = 0):
        super().__init__()
        self.up, self.proj = nn.Linear(c.d_model, 2 * c.d_model), nn.Linear(2 * c.d_model, c.d_model)

    def output_projection(self) -> nn.Module:
        return self.proj

    def forward(self, x):
        return self.proj(self.up(x))


def test_initialisation_scales_the_residual_projections_each_block_names():
    model = tiny_model("llama")
    want = [w for b in model.blocks for w in (b.attn.out.weight, b.mlp.down.weight)]
    assert [id(w) for w in model.residual_output_weights()] == [id(w) for w in want]
    block = build_block(tiny_config("llama"), 0, ffn=_Doubling)
    assert block.residual_projections() == [block.attn.out, block.mlp.proj]
