"""Task ``se_mlm``: masked-LM training that masks what the model knows least."""
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import II
from fairseq import utils
from fairseq.data import PrependTokenDataset, SortDataset, TokenBlockDataset, data_utils
from fairseq.data.encoders.utils import get_whole_word_mask
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask

from se_fairseq.criterions.token_ls import TokenLabelSmoothingCriterion, unwrap_model
from se_fairseq.data import score_file
from se_fairseq.data.score_dataset import ScoreDataset
from se_fairseq.data.se_mask_dataset import SelfEvolutionMaskDataset
from se_fairseq.data.se_masking import SelfEvolutionMasker
from se_fairseq.scoring import score_features

logger = logging.getLogger(__name__)

SE_SELECT_CHOICES = ChoiceEnum(["topk", "threshold", "sample", "random"])
SE_METRIC_CHOICES = ChoiceEnum(["correctness", "confidence"])

# fairseq masked_lm's replacement defaults; the SE modes default to 0 (every
# selected token becomes <mask>, as in the paper's reference code).
_FAIRSEQ_REPLACEMENT_DEFAULT = 0.1


@dataclass
class SelfEvolutionMLMConfig(MaskedLMConfig):
    se_select: SE_SELECT_CHOICES = field(
        default="topk",
        metadata={
            "help": "how to choose the tokens to mask: topk = the mask_prob fraction of "
            "eligible tokens with the highest scores; threshold = every token scored above "
            "--se-threshold; sample = mask_prob of the tokens drawn without replacement with "
            "probability rising with the score (Gumbel top-k at --se-temperature); random = "
            "fairseq masked_lm masking (no scores needed)"
        },
    )
    se_threshold: float = field(
        default=0.0, metadata={"help": "with --se-select threshold: mask tokens scored above it"}
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
            "on the device with --se-select topk or sample, then trains on the masked batch. "
            "Needs --criterion token_ls. Valid/test splits use random (masked_lm) masking"
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
    masking.
    """

    cfg: SelfEvolutionMLMConfig

    def __init__(self, cfg, dictionary=None):
        _check_config(cfg)
        self._online_masker = None
        for name in ("leave_unmasked_prob", "random_token_prob"):
            if getattr(cfg, name) is None:
                default = _FAIRSEQ_REPLACEMENT_DEFAULT if cfg.se_select == "random" else 0.0
                setattr(cfg, name, default)
        super().__init__(cfg, dictionary)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        if self.cfg.se_select == "random":
            return super().load_dataset(split, epoch, combine, **kwargs)
        if self.cfg.se_online:
            if split != self.cfg.train_subset:
                logger.info(f"split {split}: --se-online trains only; random masking for it")
                return super().load_dataset(split, epoch, combine, **kwargs)
            self.datasets[split] = self._load_online_split(split, epoch, combine)
            return
        prefix = self._score_prefix(split, epoch)
        if not all(os.path.exists(p) for p in score_file.paths(prefix)):
            if split == self.cfg.train_subset or self.cfg.se_scores:
                score_file.ScoreFile(prefix, self._split_path(split, epoch))  # raises, naming both
            logger.info(
                f"split {split}: no score file at {prefix}.npy; using random (masked_lm) "
                "masking for it"
            )
            return super().load_dataset(split, epoch, combine, **kwargs)
        self.datasets[split] = self._load_scored_split(split, epoch, combine, prefix)

    def _split_path(self, split, epoch):
        paths = utils.split_paths(self.cfg.data)
        return os.path.join(paths[(epoch - 1) % len(paths)], split)

    def _score_prefix(self, split, epoch):
        if self.cfg.se_scores and split == self.cfg.train_subset:
            path = self.cfg.se_scores
            for ext in (".npy", ".json"):
                if path.endswith(ext):
                    path = path[: -len(ext)]
            return path
        return score_file.default_prefix(self._split_path(split, epoch))

    def _load_scored_split(self, split, epoch, combine, prefix):
        if self.cfg.shorten_method != "none":
            raise ValueError(
                f"--shorten-method {self.cfg.shorten_method} would crop sequences apart from "
                "their scores; use --se-select random or --shorten-method none"
            )
        split_path = self._split_path(split, epoch)
        scores = score_file.ScoreFile(prefix, split_path)
        if scores.metric != self.cfg.se_metric:
            raise ValueError(
                f"score file {scores.meta_path} holds '{scores.metric}' scores but "
                f"--se-metric is '{self.cfg.se_metric}'"
            )
        tokens = self._load_tokens(split, split_path, combine)
        blocks = self._blocks(tokens, ScoreDataset(scores, tokens.sizes))
        logger.info(
            f"loaded {len(blocks[0])} blocks from {split_path} with {scores.metric} scores "
            f"from {scores.array_path} (--se-select {self.cfg.se_select})"
        )
        dataset = SelfEvolutionMaskDataset(blocks[0], blocks[1], self.build_masker(),
                                           self.dictionary.pad(), self.cfg.seed)
        return self._shuffled(dataset)

    def _load_online_split(self, split, epoch, combine):
        split_path = self._split_path(split, epoch)
        tokens = self._load_tokens(split, split_path, combine)
        if self.cfg.shorten_method != "none":
            raise ValueError("--se-online does not support --shorten-method yet")
        (blocks,) = self._blocks(tokens)
        logger.info(f"loaded {len(blocks)} blocks from {split_path} (--se-online, "
                    f"--se-select {self.cfg.se_select}, --se-metric {self.cfg.se_metric})")
        dataset = SelfEvolutionMaskDataset(blocks, None, None, self.dictionary.pad(), self.cfg.seed)
        return self._shuffled(dataset)

    def _load_tokens(self, split, split_path, combine):
        tokens = data_utils.load_indexed_dataset(split_path, self.source_dictionary, combine=combine)
        if tokens is None:
            raise FileNotFoundError(f"Dataset not found: {split} ({split_path})")
        return tokens

    def _blocks(self, tokens, scores=None):
        """Token blocks (and score blocks cut the same way), each behind <s>."""
        sources = [(tokens, self.dictionary.pad(), self.dictionary.eos(), self.dictionary.bos())]
        if scores is not None:
            sources.append((scores, 0, 0, 0))
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

    def build_masker(self):
        return SelfEvolutionMasker(
            self.dictionary,
            self.mask_idx,
            mask_prob=self.cfg.mask_prob,
            mode=str(self.cfg.se_select),
            seed=self.cfg.seed,
            threshold=self.cfg.se_threshold,
            temperature=self.cfg.se_temperature,
            leave_unmasked_prob=self.cfg.leave_unmasked_prob,
            random_token_prob=self.cfg.random_token_prob,
            freq_weighted_replacement=self.cfg.freq_weighted_replacement,
            mask_whole_words=(
                get_whole_word_mask(self.args, self.dictionary) if self.cfg.mask_whole_words else None
            ),
        )

    # -- online SE -------------------------------------------------------------
    def build_criterion(self, cfg, from_checkpoint=False):
        criterion = super().build_criterion(cfg, from_checkpoint)
        if self.cfg.se_online and not isinstance(criterion, TokenLabelSmoothingCriterion):
            raise ValueError(
                f"--se-online needs --criterion token_ls (got {type(criterion).__name__}): its "
                "reference forward is what scores the batch"
            )
        return criterion

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if "se_online_seeds" in sample:
            sample = self.mask_online(sample, model, criterion)
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
        inner = unwrap_model(model)
        was_training = inner.training
        inner.eval()
        try:
            with torch.no_grad():
                features, _ = inner(tokens, features_only=True)
                scores, logits = score_features(inner, features, tokens, pad,
                                                str(self.cfg.se_metric), keep_logits=want_ref)
                source, target = self._online_masker.mask(tokens, scores, sample["se_online_seeds"])
                selected = target.ne(pad)
                ref_probs = None
                if want_ref:
                    if logits is not None:  # rows of non-pad positions -> the selected ones
                        logits = logits[selected[tokens.ne(pad)]]
                    else:
                        logits = inner.encoder.output_layer(features[selected])
                    ref_probs = F.softmax(logits, dim=-1, dtype=torch.float32)
        finally:
            inner.train(was_training)
        masked = {k: v for k, v in sample.items() if k != "se_online_seeds"}
        masked["net_input"] = dict(sample["net_input"], src_tokens=source)
        masked["target"] = target
        if ref_probs is not None:
            masked["tls_ref_probs"] = ref_probs
        return masked


def _check_config(cfg):
    if cfg.se_online and cfg.se_select == "random":
        raise ValueError("--se-online selects by score: use --se-select topk, sample or threshold")
    if not 0.0 < cfg.mask_prob < 1.0:
        raise ValueError(f"--mask-prob must lie in (0, 1), got {cfg.mask_prob}")
    for name in ("leave_unmasked_prob", "random_token_prob"):
        value = getattr(cfg, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must lie in [0, 1], got {value}")
    if (cfg.leave_unmasked_prob or 0.0) + (cfg.random_token_prob or 0.0) > 1.0:
        raise ValueError("--leave-unmasked-prob plus --random-token-prob must not exceed 1")
    if cfg.se_temperature <= 0:
        raise ValueError(f"--se-temperature must be positive, got {cfg.se_temperature}")
    if cfg.se_select != "random" and (cfg.mask_multiple_length != 1 or cfg.mask_stdev != 0):
        raise ValueError(
            "--mask-multiple-length/--mask-stdev are fairseq random-masking options; they "
            "apply only with --se-select random"
        )
