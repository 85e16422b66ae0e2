"""Task ``se_mlm``: masked-LM training that masks what the model knows least."""

import logging
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from fairseq import metrics, utils
from fairseq.data import (
    MaskTokensDataset,
    PrependTokenDataset,
    RightPadDataset,
    SortDataset,
    TokenBlockDataset,
    data_utils,
)
from fairseq.data.encoders.utils import get_whole_word_mask
from fairseq.data.shorten_dataset import maybe_shorten_dataset
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask
from omegaconf import II

from se_fairseq.criterions.token_ls import TokenLabelSmoothingCriterion
from se_fairseq.data import score_file
from se_fairseq.data.epoch_sync_dataset import EpochSyncDataset
from se_fairseq.data.score_dataset import ScoreDataset
from se_fairseq.data.se_mask_dataset import SelfEvolutionMaskDataset
from se_fairseq.data.se_masking import (
    MASKED_LM_LEAVE_UNMASKED_PROB,
    MASKED_LM_RANDOM_TOKEN_PROB,
    SelfEvolutionMasker,
)
from se_fairseq.reference_forward import ONLINE_SEEDS, REF_PROBS, reference_forward
from se_fairseq.scoring import METRICS as ONLINE_METRICS
from se_fairseq.scoring import score_features

logger = logging.getLogger(__name__)

SE_SELECT_CHOICES = ChoiceEnum(["topk", "threshold", "sample", "random"])
SE_METRIC_CHOICES = ChoiceEnum(
    ["correctness", "confidence", "rarity"]
)  # rarity: se-score --metric rarity
SE_THRESHOLD_FALLBACK_CHOICES = ChoiceEnum(["random", "none"])

# The reference code masks the tokens whose loss (correctness) exceeds 0.1, i.e. whose
# probability is below e^-0.1 = 0.905. For confidence (entropy) the default is the
# entropy of the surest prediction with that top probability: the binary entropy
# h(e^-0.1) = 0.314 nats. A token scores below it only if the model puts more than
# 0.905 on one candidate, so the two rules agree wherever that candidate is the truth.
_P_SURE = math.exp(-0.1)
DEFAULT_THRESHOLDS = {
    "correctness": 0.1,
    "confidence": -(_P_SURE * math.log(_P_SURE) + (1 - _P_SURE) * math.log(1 - _P_SURE)),
}


class SelfEvolutionConfigError(ValueError):
    """A configuration se_mlm refuses at start-up; fairseq-train prints it as one line."""


def _one_line_refusals(previous):
    """sys.excepthook: a refusal of se_mlm (or a score file that does not fit the run)
    that nothing caught ends the program with its message on one line, as argparse
    errors do, instead of a traceback through fairseq-train's set-up; every other
    exception goes to the previous hook."""

    def hook(kind, err, tb):
        if isinstance(err, (SelfEvolutionConfigError, score_file.ScoreFileError)):
            print(f"{os.path.basename(sys.argv[0]) or 'python'}: error: {err}", file=sys.stderr)
            return
        previous(kind, err, tb)

    hook.se_fairseq_one_line = True
    return hook


if not getattr(sys.excepthook, "se_fairseq_one_line", False):
    sys.excepthook = _one_line_refusals(sys.excepthook)


@dataclass
class SelfEvolutionMLMConfig(MaskedLMConfig):
    se_select: SE_SELECT_CHOICES = field(
        default="topk",
        metadata={
            "help": "how to choose the tokens to mask: topk = the mask_prob fraction of "
            "eligible tokens with the highest scores; threshold = every token scored above "
            "--se-threshold (the reference code's rule); sample = mask_prob of the tokens drawn "
            "without replacement with probability rising with the score (Gumbel top-k at "
            "--se-temperature); random = fairseq masked_lm masking (no scores needed)"
        },
    )
    se_threshold: Optional[float] = field(
        default=None,
        metadata={
            "help": "with --se-select threshold: mask every token scored above it (default: "
            "0.1 for correctness, as the reference code; 0.314 nats for confidence, the "
            "entropy of a prediction 0.905 sure)"
        },
    )
    se_threshold_fallback: SE_THRESHOLD_FALLBACK_CHOICES = field(
        default="random",
        metadata={
            "help": "with --se-select threshold, rows with no token above the threshold: random "
            "= fairseq masked_lm masking at --mask-prob with 80/10/10 replacement (the "
            "reference code); none = leave them unmasked"
        },
    )
    se_random_share: float = field(
        default=0.0,
        metadata={
            "help": "with --se-select topk or sample: the share of each block's mask budget "
            "given to uniformly drawn tokens instead of the highest scores (0 = pure SE, "
            "1 = random positions with SE's budget)"
        },
    )
    se_temperature: float = field(
        default=1.0,
        metadata={"help": "with --se-select sample: score temperature (lower = closer to topk)"},
    )
    se_online: bool = field(
        default=False,
        metadata={
            "help": "one-stage SE: no score file; every train step scores the unmasked batch "
            "with the current model (the reference forward that token_ls needs anyway), selects "
            "on the device with --se-select topk, sample or threshold, then trains on the masked "
            "batch. Needs --criterion token_ls. Valid/test splits use random (masked_lm) masking"
        },
    )
    se_metric: SE_METRIC_CHOICES = field(
        default="correctness",
        metadata={
            "help": "the self-questioning score: correctness = -log p(true token), confidence = "
            "entropy of the prediction (offline: what the score file must hold)"
        },
    )
    se_scores: Optional[str] = field(
        default=None,
        metadata={
            "help": "score file of the train split (prefix, or its .npy/.json); default: "
            "<data>/<split>.se_scores.{npy,json} beside the split, as se-score writes it"
        },
    )
    train_subset: str = II("dataset.train_subset")
    skip_invalid_size_inputs_valid_test: bool = II("dataset.skip_invalid_size_inputs_valid_test")
    # fairseq-train's top-level --bpe options: --mask-whole-words needs them to find where
    # words begin (masked_lm reads a self.args that dataclass tasks do not have).
    se_bpe: Any = II("bpe")
    leave_unmasked_prob: Optional[float] = field(
        default=None,
        metadata={
            "help": "probability that a selected token is left unchanged (default: 0.1 with "
            "--se-select random as in masked_lm, else 0: every selected token is <mask>)"
        },
    )
    random_token_prob: Optional[float] = field(
        default=None,
        metadata={
            "help": "probability that a selected token is replaced by a random token "
            "(default: 0.1 with --se-select random as in masked_lm, else 0)"
        },
    )


@register_task("se_mlm", dataclass=SelfEvolutionMLMConfig)
class SelfEvolutionMLMTask(MaskedLMTask):
    """Self-Evolution learning: mask the tokens the vanilla model knows least.

    Train splits with a score file are masked by score (--se-select); splits
    without one (valid, test) and --se-select random use fairseq's masked_lm
    masking. Every split is wrapped so that the epoch reaches DataLoader
    workers (see EpochSyncDataset).
    """

    cfg: SelfEvolutionMLMConfig

    def __init__(self, cfg, dictionary=None):
        _check_config(cfg)
        self._online_masker = None
        self.leave_unmasked_prob, self.random_token_prob = resolved_replacement(cfg)
        super().__init__(cfg, dictionary)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        dataset = self._load_split(split, epoch, combine)
        if split != self.cfg.train_subset:
            self._check_valid_sizes(split, dataset)
        self.datasets[split] = EpochSyncDataset(dataset)

    def _check_valid_sizes(self, split, dataset):
        """fairseq-train skips training blocks longer than the positions, but stops at the
        first validation on such a block unless told to skip them: refuse now, not after
        an epoch of training."""
        try:
            skip = bool(self.cfg.skip_invalid_size_inputs_valid_test)
        except Exception:  # a config without fairseq-train's dataset options
            return
        sizes = dataset.sizes[0] if isinstance(dataset.sizes, list) else dataset.sizes
        sizes = np.asarray(sizes)
        too_long = int((sizes > self.cfg.tokens_per_sample).sum())
        if too_long and not skip:
            raise SelfEvolutionConfigError(
                f"{too_long} of the {len(sizes)} blocks of split {split} are longer than "
                f"--tokens-per-sample {self.cfg.tokens_per_sample} (the longest has "
                f"{int(sizes.max())} tokens: --sample-break-mode {self.cfg.sample_break_mode} "
                "keeps long sentences whole); fairseq-train would stop at the first validation. "
                "Add --skip-invalid-size-inputs-valid-test (skips them, as training skips its "
                "own), or use --sample-break-mode none"
            )

    def _load_split(self, split, epoch, combine):
        if self.cfg.se_select == "random":
            return self._load_random_split(split, epoch, combine)
        if self.cfg.se_online:
            if split != self.cfg.train_subset:
                logger.info(f"split {split}: --se-online trains only; random masking for it")
                return self._load_random_split(split, epoch, combine)
            return self._load_online_split(split, epoch, combine)
        prefix = self._score_prefix(split, epoch)
        if not all(os.path.exists(p) for p in score_file.paths(prefix)):
            if split == self.cfg.train_subset:
                score_file.ScoreFile(prefix, self._split_path(split, epoch))  # raises, naming both
            logger.info(
                f"split {split}: no score file at {prefix}.npy; using random (masked_lm) "
                "masking for it"
            )
            return self._load_random_split(split, epoch, combine)
        return self._load_scored_split(split, epoch, combine, prefix)

    def _split_path(self, split, epoch):
        paths = utils.split_paths(self.cfg.data)
        return os.path.join(paths[(epoch - 1) % len(paths)], split)

    def _score_prefix(self, split, epoch):
        """--se-scores names the train split's file; other splits look beside themselves."""
        if self.cfg.se_scores and split == self.cfg.train_subset:
            return score_file.prefix_of(self.cfg.se_scores)
        return score_file.default_prefix(self._split_path(split, epoch))

    def _load_random_split(self, split, epoch, combine):
        """fairseq masked_lm's dataset, with the whole-word mask taken from --bpe."""
        blocks = self._load_dataset_split(split, epoch, combine)
        pad = self.source_dictionary.pad()
        source, target = MaskTokensDataset.apply_mask(
            blocks,
            self.source_dictionary,
            pad_idx=pad,
            mask_idx=self.mask_idx,
            seed=self.cfg.seed,
            mask_prob=self.cfg.mask_prob,
            leave_unmasked_prob=self.leave_unmasked_prob,
            random_token_prob=self.random_token_prob,
            freq_weighted_replacement=self.cfg.freq_weighted_replacement,
            mask_whole_words=self._word_begins(),
            mask_multiple_length=self.cfg.mask_multiple_length,
            mask_stdev=self.cfg.mask_stdev,
            skip_masking=self.cfg.skip_masking,
        )
        dataset = self._regular_dataset(source, RightPadDataset(target, pad_idx=pad))
        with data_utils.numpy_seed(self.cfg.seed):
            shuffle = np.random.permutation(len(source))
        return SortDataset(dataset, sort_order=[shuffle, source.sizes])

    def _load_scored_split(self, split, epoch, combine, prefix):
        split_path = self._split_path(split, epoch)
        scores = score_file.ScoreFile(prefix, split_path)
        if scores.metric != self.cfg.se_metric:
            raise SelfEvolutionConfigError(
                f"score file {scores.meta_path} holds '{scores.metric}' scores but "
                f"--se-metric is '{self.cfg.se_metric}'"
            )
        self._check_blocking(scores)
        self._report_unscored(scores)
        tokens = self._load_tokens(split, split_path, combine)
        score_items = ScoreDataset(scores, tokens.sizes)
        # the same (seeded) crop of tokens and of their scores
        tokens, score_items = (
            maybe_shorten_dataset(
                dataset,
                split,
                self.cfg.shorten_data_split_list,
                self.cfg.shorten_method,
                self.cfg.tokens_per_sample,
                self.cfg.seed,
            )
            for dataset in (tokens, score_items)
        )
        blocks = self._blocks(tokens, score_items)
        logger.info(
            f"loaded {len(blocks[0])} blocks from {split_path} with {scores.metric} scores "
            f"from {scores.array_path} (--se-select {self.cfg.se_select})"
        )
        masker = self.build_masker()
        if masker.mode == "threshold":
            self._report_threshold(scores, masker)
        dataset = SelfEvolutionMaskDataset(
            blocks[0], blocks[1], masker, self.dictionary.pad(), self.cfg.seed
        )
        return self._shuffled(dataset)

    def _check_blocking(self, scores):
        """Scores are computed per block: a run that cuts other blocks would train on
        scores of other contexts, and on tokens se-score skipped. Refused."""
        differ = scores.blocking_mismatch(self.cfg.tokens_per_sample, self.cfg.sample_break_mode)
        if differ:
            theirs = " ".join(f"--{k.replace('_', '-')} {a}" for k, (a, _) in differ.items())
            ours = " ".join(f"--{k.replace('_', '-')} {b}" for k, (_, b) in differ.items())
            raise score_file.ScoreFileError(
                f"score file {scores.meta_path} was computed on blocks of {theirs}, but this run "
                f"cuts {ours}: train with the score file's blocking, or rescore with "
                f"se-score ... {ours}"
            )

    @staticmethod
    def _report_unscored(scores):
        count = scores.num_unscored
        if not count:
            return
        if scores.records_unscored:
            logger.info(
                f"{scores.meta_path}: {count} tokens in {len(scores.unscored_ranges)} blocks have "
                "no score (se-score skipped them as longer than the model, as fairseq-train skips "
                "them under the same blocking); wherever they reach a batch (e.g. through "
                "--shorten-method) they are not eligible for masking"
            )
        else:
            logger.warning(
                f"{scores.meta_path}: {count} tokens were not scored (blocks longer than the "
                "model) but this file, from an older se-score, does not record which: they hold "
                "score 0 and rank lowest wherever a batch holds them; rescore with se-score to "
                "record them"
            )

    def _report_threshold(self, scores, masker, chunk=1 << 24):
        """The threshold in use and the share of the scored tokens above it."""
        above = total = 0
        for start in range(0, len(scores.scores), chunk):
            piece = np.asarray(scores.scores[start : start + chunk], dtype=np.float32)
            above += int((piece > masker.threshold).sum())
            total += len(piece)
        total -= scores.num_unscored if scores.records_unscored else 0
        share = 100.0 * above / max(total, 1)
        source = (
            "--se-threshold"
            if self.cfg.se_threshold is not None
            else f"the default for {self.cfg.se_metric}"
        )
        rows = (
            "get masked_lm masking"
            if masker.threshold_fallback
            else "stay unmasked (--se-threshold-fallback none)"
        )
        message = (
            f"--se-select threshold: threshold {masker.threshold:.4g} ({source}); "
            f"{share:.1f} % of the {total} scored tokens of {scores.array_path} "
            f"(special tokens included) score above it and are masked; blocks with "
            f"none above it {rows}"
        )
        if above == 0 and not masker.threshold_fallback:
            logger.warning(message + ": no token is ever masked, every step trains on nothing")
        else:
            logger.info(message)

    def _load_online_split(self, split, epoch, combine):
        blocks = self._load_dataset_split(split, epoch, combine)  # brings --shorten-method
        threshold = ""
        if self.cfg.se_select == "threshold":
            threshold = (
                f" (threshold {self.build_masker().threshold:.4g}; masked_pct logs the share)"
            )
        logger.info(
            f"{split}: --se-online, --se-select {self.cfg.se_select}{threshold}, "
            f"--se-metric {self.cfg.se_metric}"
        )
        dataset = SelfEvolutionMaskDataset(blocks, None, None, self.dictionary.pad(), self.cfg.seed)
        return self._shuffled(dataset)

    def _load_tokens(self, split, split_path, combine):
        tokens = data_utils.load_indexed_dataset(
            split_path, self.source_dictionary, combine=combine
        )
        if tokens is None:
            raise FileNotFoundError(f"Dataset not found: {split} ({split_path})")
        return tokens

    def _blocks(self, tokens, scores):
        """Token blocks and score blocks cut the same way, each behind <s>."""
        sources = [
            (tokens, self.dictionary.pad(), self.dictionary.eos(), self.dictionary.bos()),
            (scores, 0, 0, 0),
        ]
        return [
            PrependTokenDataset(
                TokenBlockDataset(
                    dataset,
                    tokens.sizes,
                    self.cfg.tokens_per_sample - 1,  # one less for <s>
                    pad=pad,
                    eos=eos,
                    break_mode=self.cfg.sample_break_mode,
                ),
                bos,
            )
            for dataset, pad, eos, bos in sources
        ]

    def _shuffled(self, dataset):
        with data_utils.numpy_seed(self.cfg.seed):
            shuffle = np.random.permutation(len(dataset))
        return SortDataset(dataset, sort_order=[shuffle, dataset.sizes])

    def _word_begins(self):
        """--mask-whole-words: which dictionary entries begin a word, from --bpe."""
        if not self.cfg.mask_whole_words:
            return None
        bpe = self.cfg.se_bpe
        if bpe is None or not bpe.get("_name"):
            raise SelfEvolutionConfigError(
                "--mask-whole-words needs --bpe (and its options, e.g. --bpe sentencepiece "
                "--sentencepiece-model PATH) to know where words begin"
            )
        return get_whole_word_mask(bpe, self.source_dictionary)

    def build_masker(self):
        threshold = self.cfg.se_threshold
        if threshold is None and self.cfg.se_select == "threshold":
            threshold = DEFAULT_THRESHOLDS[str(self.cfg.se_metric)]
        return SelfEvolutionMasker(
            self.dictionary,
            self.mask_idx,
            mask_prob=self.cfg.mask_prob,
            mode=str(self.cfg.se_select),
            seed=self.cfg.seed,
            threshold=threshold,
            temperature=self.cfg.se_temperature,
            leave_unmasked_prob=self.leave_unmasked_prob,
            random_token_prob=self.random_token_prob,
            freq_weighted_replacement=self.cfg.freq_weighted_replacement,
            mask_whole_words=self._word_begins(),
            threshold_fallback=self.cfg.se_threshold_fallback == "random",
            random_share=self.cfg.se_random_share,
        )

    # -- online SE -------------------------------------------------------------
    def build_criterion(self, cfg, from_checkpoint=False):
        criterion = super().build_criterion(cfg, from_checkpoint)
        if self.cfg.se_online and not isinstance(criterion, TokenLabelSmoothingCriterion):
            raise SelfEvolutionConfigError(
                f"--se-online needs --criterion token_ls (got {type(criterion).__name__}): its "
                "reference forward is what scores the batch"
            )
        return criterion

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if ONLINE_SEEDS in sample:
            sample = self.mask_online(sample, model, criterion)
        if self.cfg.se_select == "threshold" and sample.get("target") is not None:
            # the threshold sets how much is masked: log it (percent of the batch's tokens;
            # tensors, so no host sync per step)
            ntokens = sample["ntokens"]
            masked = sample["target"].ne(self.dictionary.pad()).sum()
            metrics.log_scalar("masked_pct", 100.0 * masked / max(ntokens, 1), ntokens, round=1)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def mask_online(self, sample, model, criterion):
        """Score the unmasked batch with the live model, select, mask; keep p_ref for TLS.

        One reference forward (eval mode, no gradient) of the transformer; the LM
        head runs at every position for the scores. The reference distribution at
        the selected positions comes from the same forward.
        """
        if self._online_masker is None:
            self._online_masker = self.build_masker()
        tokens = sample["net_input"]["src_tokens"]
        pad = self.dictionary.pad()
        want_ref = criterion.alpha > 0 and criterion.reference == "model"
        with reference_forward(model) as inner:
            features, _ = inner(tokens, features_only=True)
            scores, logits = score_features(
                inner, features, tokens, pad, str(self.cfg.se_metric), keep_logits=want_ref
            )
            source, target = self._online_masker.mask(tokens, scores, sample[ONLINE_SEEDS])
            selected = target.ne(pad)
            ref_probs = None
            if want_ref:
                if logits is not None:  # rows of non-pad positions -> the selected ones
                    logits = logits[selected[tokens.ne(pad)]]
                else:
                    logits = inner.encoder.output_layer(features[selected])
                ref_probs = F.softmax(logits, dim=-1, dtype=torch.float32)
        masked = {k: v for k, v in sample.items() if k != ONLINE_SEEDS}
        masked["net_input"] = dict(sample["net_input"], src_tokens=source)
        masked["target"] = target
        if ref_probs is not None:
            masked[REF_PROBS] = ref_probs
        return masked


def _check_config(cfg):
    if cfg.se_online and cfg.se_select == "random":
        raise SelfEvolutionConfigError(
            "--se-online selects by score: use --se-select topk, sample or threshold"
        )
    if cfg.se_online and str(cfg.se_metric) not in ONLINE_METRICS:
        raise SelfEvolutionConfigError(
            f"--se-online scores with the live model: --se-metric must be one of "
            f"{', '.join(ONLINE_METRICS)}, not {cfg.se_metric} (a score file's metric)"
        )
    if not 0.0 < cfg.mask_prob < 1.0:
        raise SelfEvolutionConfigError(f"--mask-prob must lie in (0, 1), got {cfg.mask_prob}")
    for name in ("leave_unmasked_prob", "random_token_prob"):
        value = getattr(cfg, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise SelfEvolutionConfigError(
                f"--{name.replace('_', '-')} must lie in [0, 1], got {value}"
            )
    if sum(resolved_replacement(cfg)) > 1.0:
        raise SelfEvolutionConfigError(
            "--leave-unmasked-prob plus --random-token-prob must not exceed 1 "
            "(unset, each is 0.1 with --se-select random, else 0)"
        )
    if cfg.se_temperature <= 0:
        raise SelfEvolutionConfigError(
            f"--se-temperature must be positive, got {cfg.se_temperature}"
        )
    if cfg.se_select != "random" and (cfg.mask_multiple_length != 1 or cfg.mask_stdev != 0):
        raise SelfEvolutionConfigError(
            "--mask-multiple-length/--mask-stdev are fairseq random-masking options; they "
            "apply only with --se-select random"
        )
    if cfg.se_threshold is not None and cfg.se_select != "threshold":
        raise SelfEvolutionConfigError(
            f"--se-threshold applies to --se-select threshold, not {cfg.se_select}"
        )
    if (
        cfg.se_select == "threshold"
        and cfg.se_threshold is None
        and str(cfg.se_metric) not in DEFAULT_THRESHOLDS
    ):
        raise SelfEvolutionConfigError(
            f"--se-select threshold with --se-metric {cfg.se_metric} needs "
            "--se-threshold (there is no default for that metric)"
        )
    if not 0.0 <= cfg.se_random_share <= 1.0:
        raise SelfEvolutionConfigError(
            f"--se-random-share must lie in [0, 1], got {cfg.se_random_share}"
        )
    if cfg.se_random_share > 0 and cfg.se_select not in ("topk", "sample"):
        raise SelfEvolutionConfigError(
            "--se-random-share splits the budget of --se-select topk or sample, "
            f"not {cfg.se_select}"
        )
    if getattr(cfg, "d2v2_multi", False):
        raise SelfEvolutionConfigError("--d2v2-multi (data2vec batches) is not supported by se_mlm")


def resolved_replacement(cfg):
    """(leave_unmasked_prob, random_token_prob): as given, else masked_lm's 0.1 each with
    --se-select random and 0 in the SE modes (every selected token becomes <mask>, as in
    the paper's reference code)."""
    defaults = (
        (MASKED_LM_LEAVE_UNMASKED_PROB, MASKED_LM_RANDOM_TOKEN_PROB)
        if cfg.se_select == "random"
        else (0.0, 0.0)
    )
    given = (cfg.leave_unmasked_prob, cfg.random_token_prob)
    return tuple(d if g is None else float(g) for g, d in zip(given, defaults))
