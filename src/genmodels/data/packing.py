"""Fixed-length packing and a resumable, shardable batch sampler.

Pipeline: a flat token stream (:mod:`genmodels.data.token_cache`) -> :class:`PackedDataset`
(non-overlapping windows of ``seq_len + 1`` tokens) -> :class:`BatchSampler` (deterministic shuffled
batches of window indices, resumable and split across ranks).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch


__all__ = ["BatchSampler", "PackedDataset"]


# --------------------------------------------------------------------------- #
# Packing
# --------------------------------------------------------------------------- #
class PackedDataset(torch.utils.data.Dataset):
    """Non-overlapping windows of ``seq_len + 1`` tokens over a flat stream.

    Window ``i`` covers ``tokens[i*(seq_len+1) : (i+1)*(seq_len+1)]``; its
    input is the first ``seq_len`` tokens and its target the last ``seq_len``.
    The trailing partial window is dropped.  Documents run across window
    boundaries, separated by EOS tokens.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        n = len(tokens) // (seq_len + 1)
        if n == 0:
            raise ValueError(
                f"token stream of length {len(tokens)} is shorter than one "
                f"window of seq_len + 1 = {seq_len + 1} tokens"
            )
        self.seq_len = seq_len
        self.tokens = tokens
        self._windows = tokens[: n * (seq_len + 1)].reshape(n, seq_len + 1)

    def __len__(self) -> int:
        return self._windows.shape[0]

    def num_tokens(self) -> int:
        """Tokens covered by the windows (inputs + final target of each)."""
        return self._windows.size

    def get_batch(
        self, indices: Sequence[int] | np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` LongTensors of shape ``(len(indices), seq_len)``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(
                f"window indices must be in [0, {len(self)}); "
                f"got {idx.min()}..{idx.max()}"
            )
        rows = torch.from_numpy(self._windows[idx].astype(np.int64))
        return rows[:, :-1], rows[:, 1:]

    def batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """The windows as an objective's dict batch: ``input_ids`` and ``labels`` (the next tokens), ``(B, T)``."""
        x, y = self.get_batch(indices)
        return {"input_ids": x, "labels": y}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.get_batch([index])
        return x[0], y[0]


# --------------------------------------------------------------------------- #
# Sampling
# --------------------------------------------------------------------------- #
class BatchSampler:
    """Deterministic shuffled batches of sample indices, resumable and sharded.

    Each epoch uses ``np.random.Generator(PCG64(seed + epoch)).permutation``
    of ``range(num_samples)``.  A step takes the next ``batch_size *
    world_size`` indices (the global batch; an incomplete final global batch
    is dropped) and rank ``r`` receives the contiguous slice ``[r*batch_size,
    (r+1)*batch_size)`` of it, so the ranks' batches of one step together form
    exactly the single-process global batch.

    Iteration is endless: after the last step of an epoch the next epoch
    begins.  ``state_dict()`` records ``(epoch, position)`` where position is
    the number of global batches already yielded in the epoch, so a restored
    sampler continues at exactly the same data.  ``len()`` is the number of
    steps per epoch.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                "need world_size >= 1 and 0 <= rank < world_size; "
                f"got rank={rank}, world_size={world_size}"
            )
        if num_samples < batch_size * world_size:
            raise ValueError(
                f"num_samples ({num_samples}) is smaller than one global batch "
                f"(batch_size {batch_size} x world_size {world_size})"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = epoch
        self.position = 0
        self._perm: np.ndarray | None = None
        self._perm_epoch: int | None = None

    @property
    def global_batch_size(self) -> int:
        """Samples per step across all ranks."""
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        return self.num_samples // self.global_batch_size

    def _permutation(self) -> np.ndarray:
        if self._perm_epoch != self.epoch:
            rng = np.random.Generator(np.random.PCG64(self.seed + self.epoch))
            self._perm = rng.permutation(self.num_samples)
            self._perm_epoch = self.epoch
        assert self._perm is not None
        return self._perm

    def global_batch(self, epoch: int, step: int) -> np.ndarray:
        """All ranks' indices for ``step`` of ``epoch`` (no state change)."""
        saved = self.epoch
        self.epoch = epoch
        try:
            start = step * self.global_batch_size
            return self._permutation()[start : start + self.global_batch_size].copy()
        finally:
            self.epoch = saved

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self.position >= len(self):
            self.epoch += 1
            self.position = 0
        start = self.position * self.global_batch_size + self.rank * self.batch_size
        batch = self._permutation()[start : start + self.batch_size].copy()
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """Resumable state; ``position`` counts global batches in ``epoch``."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "global_batch_size": self.global_batch_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict` output.

        The dataset size and global batch size must match (the per-rank batch
        size and world size may differ as long as their product is the same).
        """
        for name, mine in (
            ("num_samples", self.num_samples),
            ("global_batch_size", self.global_batch_size),
        ):
            if name in state and int(state[name]) != mine:
                raise ValueError(
                    f"cannot resume sampler: saved {name}={state[name]}, "
                    f"current {name}={mine}"
                )
        self.seed = int(state.get("seed", self.seed))
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._perm_epoch = None
