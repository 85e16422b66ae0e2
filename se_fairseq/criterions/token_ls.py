"""Criterion ``token_ls``: Token-specific Label Smoothing (TLS) in fairseq.

The loss is the core's (``se_fairseq.core.tls``): for a masked position i the target is
(1 - alpha) * onehot(x_i) + alpha * p_ref_i, where p_ref_i is the model's own prediction at
i on the unmasked input (eval mode, no gradient). Both forwards project only the masked
positions through the LM head.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics

from se_fairseq.core import options
from se_fairseq.core.constants import REF_PROBS
from se_fairseq.core.online import reference_forward
from se_fairseq.core.tls import token_label_smoothed_loss
from se_fairseq.tasks.se_mlm_config import SPELLING

TLS_REF_CHOICES = ChoiceEnum(list(options.TLS_REF_CHOICES))


@dataclass
class TokenLabelSmoothingConfig(FairseqDataclass):
    tls_alpha: float = field(
        default=0.1,
        metadata={"help": "weight of the reference distribution in the target (0 = plain MLM)"},
    )
    tls_ref: TLS_REF_CHOICES = field(
        default="model",
        metadata={
            "help": "reference distribution: model = the model's own prediction on the "
            "unmasked input (TLS); uniform = ordinary label smoothing"
        },
    )


def original_tokens(sample, pad):
    """The unmasked input: the target where a token was selected, the source elsewhere."""
    src = sample["net_input"]["src_tokens"]
    target = sample["target"]
    return torch.where(target.ne(pad), target, src)


@register_criterion("token_ls", dataclass=TokenLabelSmoothingConfig)
class TokenLabelSmoothingCriterion(FairseqCriterion):
    def __init__(self, cfg: TokenLabelSmoothingConfig, task):
        super().__init__(task)
        options.check_tls(SPELLING, alpha=cfg.tls_alpha, ref=str(cfg.tls_ref))
        self.alpha = cfg.tls_alpha
        self.reference = cfg.tls_ref

    def needs_reference_probs(self) -> bool:
        """Whether forward reads p_ref (TLS against the model's own prediction with
        --tls-alpha > 0): the ``ReferenceConsumer`` contract of se_fairseq.tasks.se_mlm_online.
        If so, the --se-online step leaves p_ref in the batch and forward takes it there."""
        return self.alpha > 0.0 and self.reference == "model"

    def forward(self, model, sample, reduce=True):
        # Counts stay tensors, as in fairseq's masked_lm: no host sync here (the
        # trainer and reduce_metrics take tensors; fairseq sums them across workers).
        masked = sample["target"].ne(self.padding_idx)
        sample_size = masked.int().sum()
        # Rare: nothing selected in the batch. Then project every position, decided on
        # the device (masked_lm's trick): all their targets are padding and weigh
        # nothing, so the loss is a zero with a graph through the whole model (every
        # data-parallel worker runs backward).
        project = torch.where(masked.any(), masked, masked.new_ones(()))

        logits = model(**sample["net_input"], masked_tokens=project)[0]
        targets = sample["target"][project]
        weights = targets.ne(self.padding_idx)  # all True unless nothing was selected
        lprobs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
        ref_probs, ref_correct = None, 0
        if self.alpha > 0.0 and self.reference == "model":
            ref_probs = sample.get(REF_PROBS)  # --se-online computed it already
            if ref_probs is None or ref_probs.size(0) != targets.size(0):
                # (sizes differ only for an empty selection: shapes, no sync)
                ref_probs = self._reference_probs(model, sample, project)
            ref_correct = (ref_probs.argmax(dim=-1).eq(targets) & weights).sum()
        loss, nll_loss = token_label_smoothed_loss(
            lprobs, targets, self.alpha, ref_probs, ignore_index=self.padding_idx
        )
        correct = (lprobs.argmax(dim=-1).eq(targets) & weights).sum()
        return (
            loss,
            sample_size,
            self._logging_output(
                sample,
                loss.data,
                nll_loss.data,
                sample_size,
                correct,
                ref_correct,
                sample_size if self.reference == "model" and self.alpha > 0 else 0,
            ),
        )

    def _reference_probs(self, model, sample, masked):
        """p_ref at the masked positions: eval mode, unmasked input, no gradient."""
        net_input = dict(sample["net_input"])
        net_input["src_tokens"] = original_tokens(sample, self.padding_idx)
        with reference_forward(model) as inner:
            ref_logits = self._reference_logits(inner, net_input, masked)
            return F.softmax(ref_logits, dim=-1, dtype=torch.float32)

    @staticmethod
    def _reference_logits(inner, net_input, masked):
        return inner(**net_input, masked_tokens=masked)[0]  # LM head at masked positions only

    @staticmethod
    def _logging_output(sample, loss, nll_loss, sample_size, correct, ref_correct, ref_total):
        return {
            "loss": loss,
            "nll_loss": nll_loss,
            "ntokens": sample["ntokens"],
            "nsentences": sample["nsentences"],
            "sample_size": sample_size,
            "correct": correct,
            "ref_correct": ref_correct,
            "ref_total": ref_total,
        }

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        sample_size = total("sample_size")
        if sample_size == 0:
            return
        metrics.log_scalar("loss", total("loss") / sample_size / math.log(2), sample_size, round=3)
        metrics.log_scalar(
            "nll_loss", total("nll_loss") / sample_size / math.log(2), sample_size, round=3
        )
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        metrics.log_scalar("accuracy", 100.0 * total("correct") / sample_size, sample_size, round=2)
        ref_total = total("ref_total")
        if ref_total > 0:
            metrics.log_scalar(
                "ref_accuracy", 100.0 * total("ref_correct") / ref_total, ref_total, round=2
            )

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
