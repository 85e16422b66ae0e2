"""``SelfEvolutionTrainer``: transformers' Trainer with SE masking and the TLS loss.

Offline SE (``se_online`` False): the collator masks from the scores column; the loss is
TLS on the masked positions. With ``tls_ref`` model, p_ref is the model's prediction on
the unmasked input (recovered from input_ids and labels, as token_ls's
``original_tokens``), in eval mode under no_grad.

Online SE (``se_online`` True), as se_mlm's ``mask_online``: the DataLoader only pads
(``DataCollatorForSelfEvolution.padding_only``); each batch is then scored by one
reference forward of the live model on the unmasked input (eval mode, no dropout, no
gradient), selected on the device with the collator's masker and row seeds, and trained
on masked, with p_ref taken from that same reference forward. This happens in
``get_batch_samples``, which the Trainer calls once per optimizer step for all its
accumulated batches (the weights do not change between them), so that
``num_items_in_batch`` counts the masked tokens of the whole accumulated batch.
Evaluation batches get random masking (fairseq's valid split in online mode).
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Optional

import torch
import torch.nn.functional as F
from transformers import Trainer

from se_fairseq.core.compute import TRAIN_STEP, step_passes
from se_fairseq.core.constants import IGNORE_INDEX, ONLINE_SEEDS, REF_PROBS
from se_fairseq.core.online import Reference, reference_forward, select_online
from se_fairseq.core.packing import Packing
from se_fairseq.core.schedule import Rates
from se_fairseq.core.scores import EXCESS, ScoreFn, head_logits
from se_fairseq.hf.arguments import SelfEvolutionArguments
from se_fairseq.hf.collator import (
    ONLINE_ELIGIBLE,
    ONLINE_WORD_BEGINS,
    PACKED_CU_SEQLENS,
    DataCollatorForSelfEvolution,
    SelfEvolutionEpochCallback,
)
from se_fairseq.hf.heads import DenseHead, SplitHead, head_of
from se_fairseq.hf.loss import token_ls_loss_at
from se_fairseq.hf.packed import check_packing, position_offset_of

# columns the collator reads besides the model's inputs (kept by remove_unused_columns)
_COLLATOR_COLUMNS = ("special_tokens_mask", "offset_mapping")
_ONLINE_KEYS = (ONLINE_SEEDS, ONLINE_ELIGIBLE, ONLINE_WORD_BEGINS)


class SelfEvolutionTrainer(Trainer):
    """A ``transformers.Trainer`` for SE masked-LM training with TLS.

    ``data_collator`` must be a ``DataCollatorForSelfEvolution`` built with
    ``**se_args.collator_kwargs()``; ``se_args`` a ``SelfEvolutionArguments``. The
    trainer adds the ``SelfEvolutionEpochCallback`` itself. With
    ``remove_unused_columns`` True it keeps the columns the collator reads (scores,
    index, ``special_tokens_mask``, ``offset_mapping``) and drops the others.
    Every other argument is the Trainer's.
    """

    # compute_loss divides by num_items_in_batch, which get_batch_samples always counts
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args: Any,
        se_args: Optional[SelfEvolutionArguments] = None,
        reference_model: Any = None,
        score_fn: Optional[ScoreFn] = None,
        **kwargs: Any,
    ) -> None:
        if se_args is None:
            raise ValueError(
                "SelfEvolutionTrainer needs se_args= (a se_fairseq.hf.SelfEvolutionArguments)"
            )
        if score_fn is not None and not se_args.se_online:
            raise ValueError(
                "score_fn scores with the live model: it takes --se_online (offline, give the "
                "scores as the dataset's se_scores column)"
            )
        excess = se_args.se_metric == EXCESS and se_args.se_online
        if excess != (reference_model is not None):
            raise ValueError(
                "--se_metric excess (online) scores against reference_model= (a frozen "
                "AutoModelForMaskedLM of the same vocabulary), and only it takes one"
            )
        collator = kwargs.get("data_collator")
        if not isinstance(collator, DataCollatorForSelfEvolution):
            raise TypeError(
                "SelfEvolutionTrainer needs data_collator=DataCollatorForSelfEvolution(tokenizer, "
                "..., **se_args.collator_kwargs()) (its masker selects online and it masks "
                f"offline), got {type(collator).__name__}"
            )
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "SelfEvolutionTrainer computes the TLS loss itself (--tls_alpha, --tls_ref): "
                "compute_loss_func cannot be set"
            )
        _check_collator_matches(collator, se_args)
        self.se_args = se_args
        self.se_collator = collator
        # evaluation: the collator's own masking offline when the split has scores;
        # random masking in online mode and for splits without scores (se_mlm's valid)
        self._random_collator = _random_masking_like(collator)
        # masked in the train step: online SE (scored with the live model) and rate
        # schedules (the step's rate); the DataLoader only pads
        self.rates = se_args.rate_schedules(collator.mlm_probability)
        if se_args.se_online or self.rates is not None:
            with_scores = not se_args.se_online and collator.select != "random"
            kwargs["data_collator"] = collator.padding_only(with_scores)
        self._head: SplitHead | DenseHead | None = None
        self.score_fn = score_fn
        self.reference_model = reference_model
        self._reference_head: SplitHead | DenseHead | None = None
        if reference_model is not None:
            _check_reference(kwargs.get("model", args[0] if args else None), reference_model)
            reference_model.eval().requires_grad_(False)
        self._packing_checked = not collator.packing
        if collator.packing and collator.position_offset == 0:
            collator.position_offset = position_offset_of(kwargs.get("model"))
            self._random_collator.position_offset = collator.position_offset
        super().__init__(*args, **kwargs)
        self.add_callback(SelfEvolutionEpochCallback(collator))
        self._check_dataset(self.train_dataset, "train_dataset", training=True)
        evals = self.eval_dataset
        named = evals.items() if isinstance(evals, Mapping) else [("eval_dataset", evals)]
        for name, dataset in named:
            self._check_dataset(dataset, str(name), training=False)

    # -- data ----------------------------------------------------------------------

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        keep = (self.se_collator.scores_column, self.se_collator.index_column, *_COLLATOR_COLUMNS)
        assert self._signature_columns is not None
        self._signature_columns += [c for c in keep if c not in self._signature_columns]

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        dataset: Any = self.eval_dataset if eval_dataset is None else eval_dataset
        if isinstance(eval_dataset, str):
            dataset = self.eval_dataset[eval_dataset]  # type: ignore[index]
        with self._collating_with(self._eval_collator(dataset)):
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset: Any) -> Any:
        with self._collating_with(self._eval_collator(test_dataset)):
            return super().get_test_dataloader(test_dataset)

    def _eval_collator(self, dataset: Any) -> Any:
        if self.se_args.se_online or self.se_collator.select == "random":
            return self._random_collator
        columns = _columns_of(dataset)
        if columns is not None and self.se_collator.scores_column not in columns:
            return self._random_collator
        return self.se_collator

    @contextmanager
    def _collating_with(self, collator: Any) -> Iterator[None]:
        saved = self.data_collator
        self.data_collator = collator
        try:
            yield
        finally:
            self.data_collator = saved

    def _check_dataset(self, dataset: Any, name: str, training: bool) -> None:
        columns = _columns_of(dataset)
        if columns is None:
            return
        scores = self.se_args.se_scores_column
        if training and not self.se_args.se_online and self.se_args.se_select != "random":
            if scores not in columns:
                raise ValueError(
                    f"{name} has no {scores!r} column: offline SE (--se_select "
                    f"{self.se_args.se_select}, --se_online False) masks from per-token "
                    "self-questioning scores; score the dataset first (se-score --hf), or "
                    "train with --se_online (scores computed every step) or --se_select random"
                )

    # -- the online step -------------------------------------------------------------

    def get_batch_samples(
        self, epoch_iterator: Iterator, num_batches: int, device: torch.device
    ) -> tuple[list, Optional[torch.Tensor]]:
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        rates = self._rates_now()
        if self.se_args.se_online:
            batches = [self._mask_online(batch, rates) for batch in batches]
        elif self.rates is not None:
            batches = [self._mask_in_step(batch, rates) for batch in batches]
        return batches, self._count_labels(batches, device)

    def _rates_now(self) -> Optional[Rates]:
        """The scheduled rates of the coming optimizer step (progress = steps done / max
        steps), logged with the step's metrics; None without a schedule."""
        if self.rates is None:
            return None
        progress = self.state.global_step / max(self.state.max_steps, 1)
        return self.rates.at(progress)

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """The Trainer's count (6 x tokens x parameters: forward and backward) with SE's
        extra forwards without gradient (``core.compute``): the reference forward of TLS or
        of online SE, and a reference model's. ``total_flos`` in the train summary is then
        the compute SE spent, comparable with a plain run's."""
        passes = step_passes(
            reference_forward=self.se_args.se_online or self._needs_reference(),
            reference_model=self.reference_model is not None,
        )
        return super().floating_point_ops(inputs) * passes // TRAIN_STEP

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The Trainer's log, with the scheduled rates of the current step."""
        if self.rates is not None and "loss" in logs:
            rates = self.rates.at(self.state.global_step / max(self.state.max_steps, 1))
            logs["mask_prob"] = round(rates.mask_prob, 4)
            if self.se_args.se_random_share_schedule is not None:
                logs["random_share"] = round(rates.random_share, 4)
        super().log(logs, *args, **kwargs)

    def _mask_in_step(self, batch: dict, rates: Optional[Rates]) -> dict:
        """Mask a padded, unmasked batch at ``rates``: from its scores (offline SE), at
        random with --se_select random."""
        batch = self._prepare_inputs(batch)
        seeds = batch.pop(ONLINE_SEEDS)
        eligible = batch.pop(ONLINE_ELIGIBLE)
        word_begins = batch.pop(ONLINE_WORD_BEGINS, None)
        packing = self._packing_of(batch)
        tokens = batch["input_ids"]
        scores = batch.pop(self.se_collator.scores_column, None)
        if scores is None:
            scores = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
        masker = self.se_collator.masker
        if packing is None:
            masked = masker.mask(
                tokens, scores, seeds, scored=eligible, word_begins=word_begins, rates=rates
            )
        else:
            masked = packing.mask(masker, tokens, scores, seeds, eligible, word_begins, rates)
        batch["input_ids"], batch["labels"] = masked
        return batch

    @staticmethod
    def _packing_of(batch: dict) -> Optional[Packing]:
        cu_seqlens = batch.pop(PACKED_CU_SEQLENS, None)
        return None if cu_seqlens is None else Packing(cu_seqlens)

    def _count_labels(self, batches: list, device: torch.device) -> Optional[torch.Tensor]:
        """The masked tokens of the accumulated batch (over all ranks with
        ``average_tokens_across_devices``), as the Trainer's ``_get_num_items_in_batch``."""
        if not batches:
            return None
        for batch in batches:
            if "labels" not in batch:
                raise ValueError(
                    "a training batch has no labels: offline SE needs the collator to mask "
                    "(DataCollatorForSelfEvolution); with --se_online the trainer masks"
                )
        count = sum(batch["labels"].ne(IGNORE_INDEX).sum() for batch in batches)
        assert isinstance(count, torch.Tensor)
        count = count.to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def _mask_online(self, batch: dict, rates: Optional[Rates] = None) -> dict:
        """se_mlm's mask_online on a padded transformers batch: reference forward of the
        unmasked batch, scores, selection with the collator's masker, masked batch (and
        p_ref at the selected positions when TLS needs it)."""
        if "labels" in batch or ONLINE_SEEDS not in batch:
            raise ValueError(
                "--se_online: the training batches must come unmasked from "
                "DataCollatorForSelfEvolution.padding_only() (the trainer sets it up from the "
                "collator it is given); this batch was already masked (it has labels) or "
                "comes from another collator"
            )
        batch = self._prepare_inputs(batch)
        seeds = batch.pop(ONLINE_SEEDS)
        eligible = batch.pop(ONLINE_ELIGIBLE)
        word_begins = batch.pop(ONLINE_WORD_BEGINS, None)
        packing = self._packing_of(batch)
        head = self._lm_head(batch)
        reference = self._reference(batch)
        with reference_forward(self.model) as inner:
            features = head.features(inner, batch)
            step = select_online(
                features,
                batch["input_ids"],
                eligible,
                seeds,
                self.se_collator.masker,
                self.score_fn or self.se_args.se_metric,
                head.head,
                head.vocab(features),
                reference=reference,
                word_begins=word_begins,
                want_ref=self._needs_reference(),
                keep_logits=head.sparse,  # dense: the logits are there already
                rates=rates,
                packing=packing,
            )
        if step.ref_probs is not None:
            batch[REF_PROBS] = step.ref_probs
        batch["input_ids"] = step.source
        batch["labels"] = step.target
        return batch

    def _reference(self, batch: Mapping[str, Any]) -> Optional[Reference]:
        """The frozen reference model's view of ``batch`` (excess-loss selection): its own
        eval-mode forward under no_grad, on the live model's device."""
        if self.reference_model is None:
            return None
        device = batch["input_ids"].device
        if next(self.reference_model.parameters()).device != device:
            self.reference_model.to(device)
        if self._reference_head is None:
            self._reference_head = head_of(self.reference_model, batch)
        head = self._reference_head
        with torch.no_grad():
            features = head.features(self.reference_model, batch)
        return Reference(features, head.head, head.vocab(features))

    def _lm_head(self, inputs: Mapping[str, Any]) -> "SplitHead | DenseHead":
        """The model's LM head split at its projection (``se_fairseq.hf.heads``), decided
        at the first batch; dense where it cannot be split."""
        if self._head is None:
            self._head = head_of(self.model, inputs) if self.se_args.se_sparse_head else DenseHead()
        return self._head

    # -- the loss --------------------------------------------------------------------

    def _needs_reference(self) -> bool:
        return self.se_args.tls_alpha > 0.0 and self.se_args.tls_ref == "model"

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Optional[torch.Tensor | int] = None,
    ) -> Any:
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if labels is None:
            raise ValueError("SelfEvolutionTrainer.compute_loss: the batch has no labels")
        ref_probs = inputs.pop(REF_PROBS, None)
        if not self._packing_checked:
            check_packing(model, inputs, self.se_collator.position_offset)
            self._packing_checked = True
        # evaluation (return_outputs) keeps the model's whole output, for the Trainer's metrics
        head = DenseHead() if return_outputs else self._lm_head(inputs)
        if ref_probs is None and self._needs_reference():
            ref_probs = self.reference_probs(model, inputs, labels, head)
        selected = labels.ne(IGNORE_INDEX)
        if head.sparse:
            outputs = None
            logits = head.logits_at(model, inputs, selected)
        else:
            outputs = model(**inputs)
            logits = (outputs["logits"] if isinstance(outputs, Mapping) else outputs[0])[selected]
        loss = token_ls_loss_at(
            logits, labels[selected], self.se_args.tls_alpha, ref_probs, num_items_in_batch
        )
        if (
            num_items_in_batch is not None
            and self.args.average_tokens_across_devices
            and self.args.world_size > 1
        ):
            # the count spans every rank and DDP averages the gradients
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    @staticmethod
    def reference_probs(
        model: torch.nn.Module,
        inputs: Mapping[str, Any],
        labels: torch.Tensor,
        head: "SplitHead | DenseHead | None" = None,
    ) -> torch.Tensor:
        """p_ref (fp32) at the labelled positions: the model's prediction on the unmasked
        input (the label where there is one, the input id elsewhere) in eval mode under
        no_grad; with a split ``head``, projected at those positions only."""
        head = DenseHead() if head is None else head
        selected = labels.ne(IGNORE_INDEX)
        unmasked = dict(inputs)
        unmasked["input_ids"] = torch.where(selected, labels, inputs["input_ids"])
        with reference_forward(model) as inner:
            logits = head_logits(head.head, head.features(inner, unmasked)[selected])
            return F.softmax(logits, dim=-1, dtype=torch.float32)


def _columns_of(dataset: Any) -> Optional[set]:
    """The columns of a map-style dataset (a datasets.Dataset's, or its first example's
    keys); None when they cannot be read without iterating (an IterableDataset)."""
    if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset):
        return None
    names = getattr(dataset, "column_names", None)
    if isinstance(names, list):
        return set(names)
    try:
        if len(dataset) == 0:
            return None
        first = dataset[0]
    except (TypeError, KeyError, IndexError):
        return None
    return set(first) if isinstance(first, Mapping) else None


def _check_reference(model: Any, reference: Any) -> None:
    """A reference model must score the live model's vocabulary."""
    from se_fairseq.hf.provenance import model_vocab_size

    live, ref = model_vocab_size(model), model_vocab_size(reference)
    if ref is None or live != ref:
        raise ValueError(
            f"reference_model {type(reference).__name__} has an output vocabulary of {ref}, "
            f"the live model {live}: excess loss compares the two models' losses on the same "
            "tokens, so they must share one vocabulary (and tokenizer)"
        )


def _check_collator_matches(collator: DataCollatorForSelfEvolution, se_args: Any) -> None:
    expected = se_args.collator_kwargs()
    differ = [
        f"{key}={getattr(collator, key)!r} (se_args: {value!r})"
        for key, value in expected.items()
        if key not in ("threshold",) and getattr(collator, key) != value
    ]
    if differ:
        raise ValueError(
            "the collator's SE options differ from se_args: "
            + ", ".join(differ)
            + "; build it with DataCollatorForSelfEvolution(tokenizer, ..., "
            "**se_args.collator_kwargs())"
        )


def _random_masking_like(collator: DataCollatorForSelfEvolution) -> DataCollatorForSelfEvolution:
    """transformers' random masking (80/10/10) at the collator's mlm_probability and seed:
    the evaluation collator where SE masking does not apply. Its epoch stays 1: every
    evaluation masks alike."""
    if collator.select == "random":
        return collator
    random = DataCollatorForSelfEvolution(
        collator.tokenizer,
        whole_word_mask=collator.whole_word_mask,
        mlm_probability=collator.mlm_probability,
        pad_to_multiple_of=collator.pad_to_multiple_of,
        seed=collator.seed,
        select="random",
        index_column=collator.index_column,
        packing=collator.packing,
        packed_attention=collator.packed_attention,
        position_offset=collator.position_offset,
    )
    random.set_epoch(1)
    return random
