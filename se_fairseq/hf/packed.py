"""Packed batches on transformers models: where positions start, and whether a model keeps
packed examples apart.

A packed row holds several examples back to back (``core.packing``); the collator gives
position ids restarting per example and a block-diagonal 4D attention mask (or flash
attention's ``cu_seq_lens``). RoBERTa-like embeddings number positions from
``padding_idx + 1``: ``position_offset_of`` finds that offset. Not every family honours a
4D mask or given position ids (DeBERTa-v2 computes relative positions itself and refuses
a 4D mask; DistilBERT takes no position ids): ``check_packing`` runs a model once on a
packed batch and on each example alone, and refuses packing where they differ.
"""

from collections.abc import Mapping
from typing import Any

import torch

from se_fairseq.core.online import unwrap_model
from se_fairseq.core.packing import Packing


class PackingError(ValueError):
    """A model that lets packed examples see each other (or numbers their positions
    otherwise): packing is refused for it."""


def position_offset_of(model: Any) -> int:
    """The first position id of an example: padding_idx + 1 for embeddings that count
    positions from the padding index (RoBERTa, XLM-R...), else 0."""
    base = getattr(unwrap_model(model), "base_model", None)
    embeddings = getattr(base, "embeddings", None)
    if embeddings is not None and hasattr(type(embeddings), "create_position_ids_from_input_ids"):
        return int(embeddings.padding_idx) + 1
    return 0


def packing_of(position_ids: torch.Tensor, offset: int) -> Packing:
    """The examples of a packed row, from its position ids restarting at ``offset``."""
    starts = (position_ids[0] == offset).nonzero().flatten()
    ends = torch.cat([starts[1:], starts.new_tensor([position_ids.size(1)])])
    return Packing.of_lengths((ends - starts).tolist(), device=position_ids.device)


def check_packing(model: Any, inputs: Mapping[str, Any], offset: int, examples: int = 3) -> None:
    """Refuse (``PackingError``) a model whose logits on the first ``examples`` of a packed
    batch differ from those of each example alone (eval mode, no gradient)."""
    inner = unwrap_model(model)
    packing = packing_of(inputs["position_ids"], offset)
    lengths = packing.lengths[:examples].tolist()
    total = sum(lengths)
    few = Packing.of_lengths(lengths, device=inputs["input_ids"].device)
    packed: dict[str, Any] = {
        "input_ids": inputs["input_ids"][:, :total],
        "position_ids": few.position_ids(offset),
    }
    if "token_type_ids" in inputs:
        packed["token_type_ids"] = inputs["token_type_ids"][:, :total]
    if inputs.get("attention_mask") is not None:
        packed["attention_mask"] = few.block_mask()
    if "cu_seq_lens_q" in inputs:  # flash attention varlen
        cu = few.cu_seqlens.to(torch.int32)
        longest = max(lengths)
        packed.update(
            cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest
        )
    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad():
            together = inner(**packed).logits[0]
            start = 0
            for n in lengths:
                alone: dict[str, Any] = {
                    k: packed[k][:, start : start + n]
                    for k in ("input_ids", "token_type_ids")
                    if k in packed
                }
                alone["position_ids"] = torch.arange(n, device=together.device)[None] + offset
                apart = inner(**alone).logits[0]
                diff = float((together[start : start + n] - apart).abs().max())
                scale = float(apart.abs().max().clamp(min=1.0))
                if diff > 1e-4 * scale:
                    raise PackingError(
                        f"{type(inner).__name__} does not keep packed examples apart: an example "
                        f"packed with others gets logits {diff:.3g} away from its own (its "
                        "attention ignores the block-diagonal mask, or it numbers positions "
                        "itself); train it without packing"
                    )
                start += n
    except PackingError:
        raise
    except Exception as err:  # e.g. DeBERTa-v2's attention refuses a 4D mask
        raise PackingError(
            f"{type(inner).__name__} cannot take a packed batch ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160]}); train it without packing"
        ) from None
    finally:
        inner.train(was_training)
