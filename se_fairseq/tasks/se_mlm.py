"""Task ``se_mlm``: masked-LM training that masks what the model knows least."""
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from omegaconf import II
from fairseq import utils
from fairseq.data import PrependTokenDataset, SortDataset, TokenBlockDataset, data_utils
from fairseq.data.encoders.utils import get_whole_word_mask
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask

from se_fairseq.data import score_file
from se_fairseq.data.score_dataset import ScoreDataset
from se_fairseq.data.se_mask_dataset import SelfEvolutionMaskDataset
from se_fairseq.data.se_masking import SelfEvolutionMasker

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
    se_metric: SE_METRIC_CHOICES = field(
        default="correctness",
        metadata={
            "help": "the self-questioning score the score file must hold: correctness = "
            "-log p(true token), confidence = entropy of the prediction"
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
        for name in ("leave_unmasked_prob", "random_token_prob"):
            if getattr(cfg, name) is None:
                default = _FAIRSEQ_REPLACEMENT_DEFAULT if cfg.se_select == "random" else 0.0
                setattr(cfg, name, default)
        super().__init__(cfg, dictionary)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        if self.cfg.se_select == "random":
            return super().load_dataset(split, epoch, combine, **kwargs)
        prefix = self._score_prefix(split, epoch)
        if not all(os.path.exists(p) for p in score_file.paths(prefix)):
            if split == getattr(self.cfg, "train_subset", "train") or self.cfg.se_scores:
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
        if self.cfg.se_scores and split == getattr(self.cfg, "train_subset", "train"):
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
        tokens = data_utils.load_indexed_dataset(split_path, self.source_dictionary, combine=combine)
        if tokens is None:
            raise FileNotFoundError(f"Dataset not found: {split} ({split_path})")
        score_items = ScoreDataset(scores, tokens.sizes)
        blocks = [
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
            for dataset, pad, eos, bos in (
                (tokens, self.dictionary.pad(), self.dictionary.eos(), self.dictionary.bos()),
                (score_items, 0, 0, 0),
            )
        ]
        logger.info(
            f"loaded {len(blocks[0])} blocks from {split_path} with {scores.metric} scores "
            f"from {scores.array_path} (--se-select {self.cfg.se_select})"
        )
        masker = SelfEvolutionMasker(
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
        dataset = SelfEvolutionMaskDataset(blocks[0], blocks[1], masker, self.dictionary.pad())
        with data_utils.numpy_seed(self.cfg.seed):
            shuffle = np.random.permutation(len(dataset))
        return SortDataset(dataset, sort_order=[shuffle, dataset.sizes])


def _check_config(cfg):
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
