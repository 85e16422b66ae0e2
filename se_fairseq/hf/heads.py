"""The masked-LM head of a transformers model, split at its vocabulary projection.

Every family the project supports ends its head with the output embeddings
(``get_output_embeddings()``, a ``Linear(hidden, vocab)``, often tied to the input
embeddings): BERT's ``cls.predictions.decoder``, RoBERTa's and XLM-R's
``lm_head.decoder``, DeBERTa-v2's (legacy head) ``cls.predictions.decoder``, ModernBERT's
``decoder``, ELECTRA's ``generator_lm_head``, DistilBERT's ``vocab_projector``. The head's
small transform (dense, activation, norm) runs as it is, at every position; the projection
runs only on the rows that need it (the labelled positions of the masked forward, the
eligible ones of the reference forward, in chunks): no (tokens x vocab) tensor larger
than a chunk exists.

How: while the model runs, the projection module is called on the rows that need it
only (the training forward: it runs inside the model's forward, so data-parallel wrappers
see every weight used there), or is the identity (the reference forward, eval mode
without gradient: the model's ``logits`` are then the transformed features, which the
core's scoring ``Head`` projects chunk by chunk with the projection's weight and bias). A
model whose head does not end with that module called once on the features (its logits
differ, checked once on the first batch at one row) is run densely, with one warning
naming its class.
"""

import logging
import warnings
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Optional

import torch
import torch.nn.functional as F

from se_fairseq.core.online import unwrap_model

logger = logging.getLogger(__name__)

_warned: set[str] = set()
# model -> whether its head splits (checked once per model)
_splits: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def _warn_dense_once(model: Any, why: str) -> None:
    name = type(model).__name__
    if name in _warned:
        return
    _warned.add(name)
    warnings.warn(
        f"se_fairseq: the masked-LM head of {name} cannot be split at its vocabulary "
        f"projection ({why}); it runs densely: full (tokens x vocab) logits per forward",
        RuntimeWarning,
        stacklevel=3,
    )


class DenseHead:
    """The model's full logits as they are: the fallback, and the reference for tests."""

    sparse = False

    def features(self, model: Any, inputs: Mapping[str, Any]) -> torch.Tensor:
        return _logits_of(model(**inputs))

    def logits_at(
        self, model: Any, inputs: Mapping[str, Any], selected: torch.Tensor
    ) -> torch.Tensor:
        return _logits_of(model(**inputs))[selected]

    def head(self, rows: torch.Tensor) -> tuple[torch.Tensor, None]:
        return rows, None

    def vocab(self, features: torch.Tensor) -> int:
        return int(features.size(-1))


class SplitHead:
    """The head of ``model`` split at ``get_output_embeddings()`` (module doc)."""

    sparse = True

    def __init__(self, projection: torch.nn.Linear) -> None:
        self.projection = projection

    @contextmanager
    def _projection_skipped(self) -> Iterator[list]:
        calls: list = []

        def identity(x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape)
            return x

        self.projection.forward = identity  # type: ignore[method-assign,assignment]
        try:
            yield calls
        finally:
            del self.projection.forward

    def features(self, model: Any, inputs: Mapping[str, Any]) -> torch.Tensor:
        """The head's input to its projection at every position (batch x length x hidden)."""
        with self._projection_skipped() as calls:
            features = _logits_of(model(**inputs))
        if len(calls) != 1 or features.size(-1) != self.projection.in_features:
            raise HeadSplitError(
                f"the projection ran {len(calls)} time(s) and the logits have "
                f"{features.size(-1)} columns, not {self.projection.in_features}"
            )
        return features

    def logits_at(
        self, model: Any, inputs: Mapping[str, Any], selected: torch.Tensor
    ) -> torch.Tensor:
        """The model's logits at the ``selected`` positions (bool, batch x length) only,
        in row-major order: the projection runs on those rows, inside the forward."""
        project = self.projection.forward
        calls: list = []

        def on_selected(x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape)
            return project(x[selected])

        self.projection.forward = on_selected  # type: ignore[method-assign,assignment]
        try:
            logits = _logits_of(model(**inputs))
        finally:
            del self.projection.forward
        if len(calls) != 1:
            raise HeadSplitError(f"the projection ran {len(calls)} time(s), not once")
        return logits

    def head(self, rows: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(rows @ W^T, bias): the projection of feature ``rows``, its bias not yet added."""
        return F.linear(rows, self.projection.weight), self.projection.bias

    def vocab(self, features: torch.Tensor) -> int:
        return int(self.projection.out_features)


class HeadSplitError(RuntimeError):
    """The model's head does not end with its output embeddings called once."""


def _logits_of(outputs: Any) -> torch.Tensor:
    return outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]


def _agrees(split: SplitHead, model: Any, inputs: Mapping[str, Any]) -> Optional[str]:
    """None when the split head gives the model's own logits on one row of ``inputs``
    (eval mode, no gradient), else why not."""
    row = {
        k: v[:1]
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.size(0) == len(inputs["input_ids"])
        else v
        for k, v in inputs.items()
    }
    inner = unwrap_model(model)
    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad():
            dense = _logits_of(inner(**row)).float()
            try:
                features = split.features(inner, row)
            except HeadSplitError as err:
                return str(err)
            logits, bias = split.head(features)
            rebuilt = (logits if bias is None else logits + bias).float()
            everywhere = torch.ones(dense.shape[:-1], dtype=torch.bool, device=dense.device)
            try:
                at_rows = split.logits_at(inner, row, everywhere).float()
            except HeadSplitError as err:
                return str(err)
    finally:
        inner.train(was_training)
    if rebuilt.shape != dense.shape:
        return f"logits of shape {tuple(rebuilt.shape)} instead of {tuple(dense.shape)}"
    if at_rows.shape != (dense.shape[:-1].numel(), dense.shape[-1]):
        return f"logits of shape {tuple(at_rows.shape)} at every position"
    # a head that does something else after its projection moves the logits by their own
    # scale; bf16/fp16 forwards (autocast, mixed precision) round the two paths apart by
    # a few of their ulps, far less
    scale = float(dense.abs().max().clamp(min=1.0))
    for got in (rebuilt, at_rows.reshape(dense.shape)):
        if not torch.allclose(got, dense, rtol=2e-2, atol=2e-2 * scale):
            diff = float((got - dense).abs().max())
            return f"its logits differ from the projection of the features by {diff:.3g}"
    return None


def head_of(model: Any, inputs: Mapping[str, Any]) -> "SplitHead | DenseHead":
    """The split head of ``model`` when it gives the model's own logits on a row of
    ``inputs`` (checked at the first call for this model), else the dense one, with a
    one-time warning."""
    inner = unwrap_model(model)
    projection = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if not isinstance(projection, torch.nn.Linear):
        _warn_dense_once(inner, "get_output_embeddings() is not a torch.nn.Linear")
        return DenseHead()
    split = SplitHead(projection)
    if inner not in _splits:  # the check is of the head's structure: once per model
        why = _agrees(split, model, inputs)
        _splits[inner] = why is None
        if why is not None:
            _warn_dense_once(inner, why)
        else:
            logger.info(f"{type(inner).__name__}: the LM head's projection runs on chosen rows")
    return split if _splits[inner] else DenseHead()
