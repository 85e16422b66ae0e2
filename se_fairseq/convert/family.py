"""The family protocol: what one model family (``roberta.py``, ``bert.py``) tells the
drivers, and finding the family of a checkpoint or an HF model."""

import logging
import re
from dataclasses import dataclass

from .errors import refuse

logger = logging.getLogger("se_fairseq.convert")


@dataclass
class HFModel:
    """A family's HF side: config, the tensors ``save_pretrained`` writes, and the HF
    row of each fairseq token id (None: the same ids)."""

    config: object
    state_dict: dict
    token_ids: object = None


@dataclass
class FairseqModel:
    """A family's fairseq side: ``--arch``, the options (``encoder_layers`` ...) and
    the matching fairseq-train flags, the state dict, and the HF row of each
    fairseq token id (None: the same ids)."""

    arch: str
    options: dict
    args: list
    state_dict: dict
    token_ids: object = None
    write_extras: object = None  # write_extras(out_dir) -> paths of files beyond dict.txt


class Family:
    """One model family on both sides. A subclass (one module: roberta.py, bert.py)
    sets the class attributes (names, messages), implements the methods that raise
    NotImplementedError and overrides the hooks where it has something of its own;
    ``state_dicts.py`` maps the weights and ``drivers.py`` does the rest (paths,
    files, checks). A new family is a new module with a ``FAMILY`` instance and its
    name in :data:`FAMILY_MODULES`."""

    name: str | None = None  # "roberta"
    hf_class: str | None = None  # transformers class of the masked LM, e.g. "RobertaForMaskedLM"
    hf_config_class: str | None = None  # e.g. "RobertaConfig"
    hf_model_types: tuple[str, ...] = ()  # config.json model_type values this family reads
    hf_prefix: str | None = None  # key prefix of the HF encoder, e.g. "roberta."
    hf_head_prefix: str | None = None  # key prefix of the HF masked-LM head, e.g. "lm_head."
    # what to-hf writes (+ fairseq_dict.txt)
    hf_outputs: tuple[str, ...] = ("config.json", "model.safetensors")
    # what from-hf writes beside OUT.pt beyond dict.txt (FairseqModel.write_extras)
    fairseq_outputs: tuple[str, ...] = ()

    # the names beyond the shared layer table (layout.LAYER): (fairseq name under
    # layout.FS, HF name under hf_prefix) of the embeddings, and (fairseq name under
    # layout.FS_HEAD, HF name under hf_head_prefix) of the LM head, whose weight is tied
    embeddings: tuple[tuple[str, str], ...] = ()
    lm_head: tuple[tuple[str, str], ...] = ()
    # HF tensors expected beyond the mapped ones (RoBERTa: token types)
    hf_extra_keys: tuple[str, ...] = ()
    hf_ignored: re.Pattern[str] | None = None  # regex of HF buffers left out silently
    # regex of HF tensors of other heads (pooler, NSP), dropped
    hf_other_heads: re.Pattern[str] | None = None
    # fairseq buffer with the HF row of each fairseq id (None: same ids)
    token_ids_key: str | None = None
    token_types = False  # whether the fairseq model carries the token-type table
    position_offset = 0  # position-table rows before the first position (RoBERTa: pad + 1)
    layer_norm_eps: float | None = None

    # how messages name the models
    fairseq_name: str | None = None  # e.g. "fairseq RoBERTa"
    hf_name: str | None = None  # e.g. "HF RoBERTa"
    hf_untied_problem: str | None = None  # the refusal of an HF decoder that is not the embeddings

    def fairseq_model_class(self):
        raise NotImplementedError

    def archs(self):
        from fairseq.models import ARCH_MODEL_REGISTRY

        cls = self.fairseq_model_class()
        return sorted(a for a, m in ARCH_MODEL_REGISTRY.items() if m is cls)

    # -- fairseq -> HF
    def upgrade_fairseq_state_dict(self, state_dict):
        """The state dict in the names of the fairseq version converted (a new dict)."""
        return dict(state_dict)

    def fairseq_layout_problems(self, state_dict):
        """Tensors of a layout the HF model cannot compute, as messages."""
        return []

    def note_fairseq_positions(self, options, positions):
        """Notes on the position table of ``positions`` rows against the options."""

    def hf_extra_tensors(self, dim, dtype):
        """HF tensors the fairseq model has no counterpart of, as HF writes them."""
        return {}

    def hf_config_options(self, state_dict):
        """The family's own HF config settings beyond the shared ones."""
        return {}

    def hf_summary(self, config):
        """layers, hidden, ffn, heads, vocab_size, max_positions of an HF config."""
        summary = dict(
            layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            ffn=config.intermediate_size,
            heads=config.num_attention_heads,
            vocab_size=config.vocab_size,
            max_positions=config.max_position_embeddings - self.position_offset,
        )
        if self.token_types:
            summary["type_vocab_size"] = config.type_vocab_size
        return summary

    def hf_extras(self, hf, dictionary, tokenizer_dir, search_dirs, transformers):
        """Checks the files beyond config, weights and fairseq_dict.txt (a tokenizer:
        ``tokenizer_dir``, else looked for in ``search_dirs``) and returns a function
        ``write(out_dir) -> paths`` that writes them."""
        if tokenizer_dir is not None:
            logger.warning(f"--tokenizer is for BERT checkpoints; {self.name} ignores it")
        return lambda out_dir: []

    # -- HF -> fairseq
    def hf_config_problems(self, config):
        """What in a raw config.json dict the fairseq model cannot compute, as messages."""
        raise NotImplementedError

    def hf_dropped(self, key):
        """An HF tensor of another head (pooler, NSP) that the masked LM leaves out."""
        return bool(self.hf_other_heads and self.hf_other_heads.match(key))

    def hf_unused(self, key):
        """An HF tensor to leave out silently or with a note (buffers, other heads)."""
        return self.hf_dropped(key) or bool(self.hf_ignored and self.hf_ignored.match(key))

    def check_hf_weights(self, state_dict):
        """Refuse HF weights the fairseq model cannot compute (beyond the shared checks)."""

    def fold_hf_weights(self, state_dict, mapped):
        """Fold HF tensors without a fairseq counterpart into ``mapped`` (HF names)."""

    def to_fairseq_state(self, hf_dir, config, state_dict, transformers):
        """(HF dir, loaded config, masked-LM state dict) -> (FairseqModel, dict.txt text,
        where its words came from). Refuses what fairseq cannot compute."""
        raise NotImplementedError

    def summary(self, options):
        summary = dict(
            layers=options["encoder_layers"],
            hidden=options["encoder_embed_dim"],
            ffn=options["encoder_ffn_embed_dim"],
            heads=options["encoder_attention_heads"],
            vocab_size=options["vocab_size"],
            max_positions=options["max_positions"],
        )
        if self.token_types:
            summary["type_vocab_size"] = options["type_vocab_size"]
        return summary


FAMILY_MODULES = ("roberta", "bert")  # se_fairseq/convert/<name>.py, each with a FAMILY


def families():
    import importlib

    return [importlib.import_module(f"se_fairseq.convert.{name}").FAMILY for name in FAMILY_MODULES]


def family_of_arch(arch):
    """The family whose fairseq model class ``--arch arch`` builds (exactly that class)."""
    from fairseq.models import ARCH_MODEL_REGISTRY

    model_class = ARCH_MODEL_REGISTRY.get(arch)
    for family in families():
        if model_class is family.fairseq_model_class():
            return family
    supported = ", ".join(a for family in families() for a in family.archs())
    refuse(f"arch {arch!r}", f"only these fairseq architectures convert: {supported}")


def family_of_hf_config(config):
    model_type = config.get("model_type", "roberta")
    for family in families():
        if model_type in family.hf_model_types:
            return family
    types = ", ".join(t for family in families() for t in family.hf_model_types)
    refuse("this Hugging Face model", f"model_type {model_type!r}: se-convert converts {types}")
