"""The causal objective on packed examples (the ``examples`` data kind): several examples in one row, told apart
by ``segment_ids`` with ``position_ids`` restarting in each, lose exactly what they lose one by one."""
from __future__ import annotations

import torch

import genmodels
from genmodels.objectives import CausalLM


def test_packed_examples_lose_what_they_lose_one_by_one():
    torch.manual_seed(0)
    model = genmodels.build_model(genmodels.preset("llama-tiny", vocab_size=50, d_model=32, n_layers=2, n_heads=2,
                                                   n_kv_heads=1, d_ff=64, max_seq_len=32))
    obj = CausalLM(model, chunk=5)
    a, b = torch.randint(0, 50, (6,)), torch.randint(0, 50, (8,))

    def alone(x: torch.Tensor) -> torch.Tensor:  # the summed loss of one example
        return obj({"input_ids": x[None, :-1], "labels": x[None, 1:]})[0] * (len(x) - 1)

    pad = torch.zeros(2, dtype=torch.long)
    batch = {"input_ids": torch.cat([a[:-1], b[:-1], pad])[None],  # (1, 14): 5 + 7 tokens, 2 of padding
             "labels": torch.cat([a[1:], b[1:], pad - 100])[None],
             "segment_ids": torch.tensor([[1] * 5 + [2] * 7 + [0] * 2]),
             "position_ids": torch.cat([torch.arange(5), torch.arange(7), pad])[None]}
    packed = obj(batch)[0] * 12
    assert torch.allclose(packed, alone(a) + alone(b), atol=1e-5, rtol=1e-6)
    assert obj.units(batch) == 12 and obj.units({"input_ids": batch["input_ids"]}) == 14
