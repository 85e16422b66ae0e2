"""Packed, padding-free batches: several examples in one row, one after the other.

The layout of transformers' ``DataCollatorWithFlattening``: a batch of one row holding the
examples' tokens back to back, position ids restarting at each example, and the examples'
boundaries as cumulative lengths (``cu_seq_lens``: 0, len(e0), len(e0) + len(e1), ...).
Masking stays per example: ``Packing.rows`` lays a packed row out as one padded row per
example (each starting at column 0), the masker masks those as it masks a padded batch,
and ``Packing.flat`` packs the result again, so a packed batch gets exactly the masks its
examples get padded (right-padded). ``block_mask`` keeps packed examples from attending to
each other where attention reads a 4D mask (SDPA, eager); flash attention's varlen kernels
read ``cu_seq_lens`` instead.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from se_fairseq.core.masking import SelfEvolutionMasker
    from se_fairseq.core.schedule import Rates


@dataclass(frozen=True)
class Packing:
    """Where each example of a packed row lies: ``cu_seqlens`` (examples + 1, int64)."""

    cu_seqlens: torch.Tensor

    @classmethod
    def of_lengths(cls, lengths: Sequence[int], device: "torch.device | str" = "cpu") -> "Packing":
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int64, device=device)
        cu[1:] = torch.cumsum(torch.as_tensor(list(lengths), dtype=torch.int64), 0)
        return cls(cu)

    @property
    def lengths(self) -> torch.Tensor:
        return self.cu_seqlens[1:] - self.cu_seqlens[:-1]

    @property
    def total(self) -> int:
        return int(self.cu_seqlens[-1])

    def _places(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(example, column) of every position of the packed row."""
        lengths = self.lengths
        example = torch.repeat_interleave(
            torch.arange(len(lengths), device=lengths.device), lengths
        )
        column = torch.arange(self.total, device=lengths.device) - self.cu_seqlens[example]
        return example, column

    def rows(self, packed: torch.Tensor, fill: "float | int | bool") -> torch.Tensor:
        """A packed (1, total, ...) tensor as (examples, longest, ...), each example from
        column 0, ``fill`` after its end."""
        flat = packed.reshape(self.total, *packed.shape[2:])
        example, column = self._places()
        longest = int(self.lengths.max()) if len(self.lengths) else 0
        out = flat.new_full((len(self.lengths), longest, *flat.shape[1:]), fill)
        out[example, column] = flat
        return out

    def flat(self, rows: torch.Tensor) -> torch.Tensor:
        """The inverse of ``rows``: (examples, longest, ...) -> (1, total, ...)."""
        example, column = self._places()
        return rows[example, column].unsqueeze(0)

    def position_ids(self, offset: int = 0) -> torch.Tensor:
        """(1, total): 0, 1, ... restarting at each example, plus ``offset`` (RoBERTa-like
        embeddings number positions from padding_idx + 1)."""
        return (self._places()[1] + offset).unsqueeze(0)

    def block_mask(self) -> torch.Tensor:
        """(1, 1, total, total) bool: True where query and key belong to one example."""
        example = self._places()[0]
        return (example[:, None] == example[None, :])[None, None]

    def mask(
        self,
        masker: "SelfEvolutionMasker",
        tokens: torch.Tensor,
        scores: torch.Tensor,
        seeds: torch.Tensor,
        scored: torch.Tensor,
        word_begins: "torch.Tensor | None" = None,
        rates: "Rates | None" = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``masker.mask`` on a packed row (1, total), example by example: each example is
        masked as its padded row would be (``seeds`` holds one row seed per example)."""
        source, target = masker.mask(
            self.rows(tokens, 0),
            self.rows(scores, 0.0),
            seeds,
            scored=self.rows(scored, False),
            word_begins=None if word_begins is None else self.rows(word_begins, True),
            rates=rates,
        )
        return self.flat(source), self.flat(target)
