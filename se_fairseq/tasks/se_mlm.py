"""Task ``se_mlm``: masked-LM training that masks what the model knows least.

Like fairseq's masked_lm task, this module is the task and the building of its
datasets. The options and their checks live in ``se_mlm_config``; the --se-online
step (score, select, mask with the live model) in ``se_mlm_online``.
"""

import logging
import os

import numpy as np
import torch
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
from fairseq.tasks import register_task
from fairseq.tasks.masked_lm import MaskedLMTask

from se_fairseq.core.compute import scoring_passes, step_passes
from se_fairseq.core.constants import ONLINE_SEEDS, SCORES_COLUMN
from se_fairseq.criterions.token_ls import TokenLabelSmoothingCriterion
from se_fairseq.data import score_file
from se_fairseq.data.epoch_sync_dataset import EpochSyncDataset
from se_fairseq.data.score_dataset import ScoreDataset
from se_fairseq.data.se_mask_dataset import SelfEvolutionMaskDataset
from se_fairseq.tasks import se_mlm_config, se_mlm_online
from se_fairseq.tasks.se_mlm_config import (
    SelfEvolutionConfigError,
    SelfEvolutionMLMConfig,
    _check_config,
    resolved_replacement,
)

logger = logging.getLogger(__name__)


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
        self._step_masker = None
        self._reference = None  # --se-reference's model, loaded with the train split
        self.rates = se_mlm_config.rate_schedules(cfg)
        self.leave_unmasked_prob, self.random_token_prob = resolved_replacement(cfg)
        super().__init__(cfg, dictionary)
        # the compute of the scoring pass behind the train split's score file (token passes,
        # core.compute); training's is summed in fairseq's metrics, which checkpoints keep
        self.state.add_factory("scoring_passes", lambda: 0)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        dataset = self._load_split(split, epoch, combine)
        if split != self.cfg.train_subset:
            se_mlm_config.check_valid_sizes(self.cfg, split, dataset)
        self.datasets[split] = EpochSyncDataset(dataset)

    def _load_split(self, split, epoch, combine):
        if self.rates is not None and split == self.cfg.train_subset and not self.cfg.se_online:
            if self.cfg.se_select == "random":
                return self._load_unmasked_split(split, epoch, combine)
            prefix = self._score_prefix(split, epoch)
            return self._load_scored_split(split, epoch, combine, prefix, in_step=True)
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

    def _load_scored_split(self, split, epoch, combine, prefix, in_step=False):
        split_path = self._split_path(split, epoch)
        scores = score_file.ScoreFile(prefix, split_path)
        se_mlm_config.check_score_file(self.cfg, scores)
        self._report_unscored(scores)
        if split == self.cfg.train_subset:
            self.state.merge_state_dict({"scoring_passes": scoring_compute(scores)})
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
            blocks[0], blocks[1], None if in_step else masker, self.dictionary.pad(), self.cfg.seed
        )
        return self._shuffled(dataset)

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

    def _load_unmasked_split(self, split, epoch, combine):
        """Blocks the train step masks (here: --se-select random at a scheduled rate)."""
        blocks = self._load_dataset_split(split, epoch, combine)  # brings --shorten-method
        logger.info(
            f"{split}: --se-select random at the rates of {self.rates}, masked in the train "
            "step (each eligible token with the step's probability)"
        )
        dataset = SelfEvolutionMaskDataset(blocks, None, None, self.dictionary.pad(), self.cfg.seed)
        return self._shuffled(dataset)

    def _load_online_split(self, split, epoch, combine):
        reference = ""
        if self.cfg.se_reference is not None:
            self.reference_model()  # a reference that cannot serve is refused before training
            reference = f" against the frozen reference {self.cfg.se_reference}"
        blocks = self._load_dataset_split(split, epoch, combine)  # brings --shorten-method
        threshold = ""
        if self.cfg.se_select == "threshold":
            threshold = (
                f" (threshold {self.build_masker().threshold:.4g}; masked_pct logs the share)"
            )
        logger.info(
            f"{split}: --se-online, --se-select {self.cfg.se_select}{threshold}, "
            f"--se-metric {self.cfg.se_metric}{reference}"
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
        return se_mlm_config.build_masker(
            self.cfg, self.dictionary, self.mask_idx, self._word_begins()
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
            rates = self.rates_at(update_num)
            if self.cfg.se_online:
                sample = self.mask_online(sample, model, criterion, rates)
            else:
                sample = self.mask_in_step(sample, rates)
        if self.cfg.se_select == "threshold" and sample.get("target") is not None:
            # the threshold sets how much is masked: log it (percent of the batch's tokens;
            # tensors, so no host sync per step)
            ntokens = sample["ntokens"]
            masked = sample["target"].ne(self.dictionary.pad()).sum()
            metrics.log_scalar("masked_pct", 100.0 * masked / max(ntokens, 1), ntokens, round=1)
        loss, sample_size, logging_output = super().train_step(
            sample, model, criterion, optimizer, update_num, ignore_grad
        )
        logging_output["tok_passes"] = sample["ntokens"] * self.step_passes(criterion)
        return loss, sample_size, logging_output

    def step_passes(self, criterion):
        """Token passes of a training step (core.compute): forward and backward, the
        reference forward of online SE or of TLS, a reference model's forward."""
        needs_reference = getattr(criterion, "needs_reference_probs", lambda: False)()
        return step_passes(
            reference_forward=self.cfg.se_online or needs_reference,
            reference_model=self.cfg.se_reference is not None,
        )

    def reduce_metrics(self, logging_outputs, criterion):
        """The criterion's metrics, and the compute: ``tok_passes`` (token passes of the
        interval or epoch) and ``tok_passes_total`` (the run's, the score file's scoring
        pass included; kept in checkpoints)."""
        super().reduce_metrics(logging_outputs, criterion)
        passes = int(sum(log.get("tok_passes", 0) for log in logging_outputs))
        if passes:
            metrics.log_scalar_sum("tok_passes", passes, round=0)
            total = self.state.scoring_passes + _run_sum("tok_passes_run", passes)
            metrics.log_scalar("tok_passes_total", total, weight=0, round=0)

    def rates_at(self, update_num):
        """The scheduled rates of update ``update_num`` (None without a schedule), logged."""
        if self.rates is None:
            return None
        max_update = se_mlm_config.max_update(self.cfg)
        rates = self.rates.at(update_num / max_update)
        metrics.log_scalar("mask_prob", rates.mask_prob, round=3)
        if self.cfg.se_random_share_schedule is not None:
            metrics.log_scalar("random_share", rates.random_share, round=3)
        return rates

    def step_masker(self):
        if self._step_masker is None:
            self._step_masker = self.build_masker()
        return self._step_masker

    def reference_model(self):
        """The frozen reference model of --se-reference (None without it), loaded once on
        the CPU (se_mlm_online.load_reference); the online step moves it beside the live
        model. It is the task's, not the model's: no optimizer or checkpoint sees it."""
        if self._reference is None and self.cfg.se_reference is not None:
            data = utils.split_paths(self.cfg.data)[0]
            reference = se_mlm_online.load_reference(self.cfg.se_reference, data)
            positions = int(reference.max_positions())
            if positions < self.cfg.tokens_per_sample:
                raise SelfEvolutionConfigError(
                    f"--se-reference checkpoint {self.cfg.se_reference} reads at most "
                    f"{positions} positions, fewer than the blocks of --tokens-per-sample "
                    f"{self.cfg.tokens_per_sample}"
                )
            self._reference = reference
        return self._reference

    def mask_online(self, sample, model, criterion, rates=None):
        """Score the unmasked batch with the live model (against the reference model with
        --se-metric excess), select, mask; keep p_ref for TLS (se_mlm_online.mask_online,
        with the masker of the options, at ``rates``)."""
        reference = self.reference_model()
        return se_mlm_online.mask_online(
            sample,
            model,
            criterion,
            self.step_masker(),
            self.dictionary.pad(),
            str(self.cfg.se_metric),
            rates,
            reference=None if reference is None else se_mlm_online.beside(reference, model),
        )

    def mask_in_step(self, sample, rates):
        """Mask a batch that came unmasked (a rate schedule): from its scores (NaN: not
        eligible), or at random with --se-select random, at ``rates``."""
        tokens = sample["net_input"]["src_tokens"]
        scores = sample.get(SCORES_COLUMN)
        scored = None
        if scores is None:
            scores = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
        else:
            scored = ~torch.isnan(scores)
            scores = scores.masked_fill(~scored, 0.0)
        source, target = self.step_masker().mask(
            tokens, scores, sample[ONLINE_SEEDS], scored=scored, rates=rates
        )
        masked = {k: v for k, v in sample.items() if k not in (ONLINE_SEEDS, SCORES_COLUMN)}
        masked["net_input"] = dict(sample["net_input"], src_tokens=source)
        masked["target"] = target
        return masked


def scoring_compute(scores):
    """Token passes of the scoring behind a score file: its scored tokens times the forwards
    each took (one, two for excess loss; rarity: none, it is a count)."""
    if scores.metric == "rarity":
        return 0
    tokens = int((scores.meta.get("summary") or {}).get("tokens", 0))
    return tokens * scoring_passes(reference_model=scores.metric == "excess")


def _run_sum(key, value):
    """Add ``value`` to the run's sum under ``key`` in fairseq's root meters, which
    checkpoints keep and a resume restores (--reset-meters starts it again); returns the
    sum. Read and written where fairseq saves them (``get_meters("default")``): after a
    resume, the root aggregator fairseq logs into is not the one it restored and saves."""
    from fairseq.logging.meters import SumMeter

    run = metrics.get_meters("default")
    if key not in run:
        run.add_meter(key, SumMeter(round=0), priority=10)
    run[key].update(value)
    return int(run[key].sum)
