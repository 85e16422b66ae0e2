"""fairseq model ``hf_bert``: what Hugging Face ``BertForMaskedLM`` computes.

``--arch hf_bert_base`` (12 layers, 768, 12 heads; ``--arch hf_bert`` is the same)
and ``--arch hf_bert_large`` (24 layers, 1024, 16 heads). The names are not
``bert_base``/``bert_large``: fairseq 0.12 registers those for its own
``masked_lm`` model (``fairseq/models/masked_lm.py``), which is not BERT as HF
computes it (no token types in the LM input, other head). The model is fairseq's RoBERTa
(``RobertaModel``: the ``masked_tokens`` / ``features_only`` forward, the LM head
as ``encoder.output_layer``, classification heads for ``sentence_prediction``)
with BERT's embeddings and normalisation:

- **positions** count from 0 (``0 .. T-1``, a plain table of ``--max-positions``
  rows); fairseq's learned positions count from ``padding_idx + 1``;
- **token types**: a table of ``--type-vocab-size`` rows (2 in BERT). The MLM
  tasks feed one segment, which BERT encodes as type 0 (HF's default
  ``token_type_ids`` and its tokenizer's first segment), so row 0 is added to
  every position; the other rows are kept (a converted model converts back bit
  for bit) but never read;
- **LayerNorm epsilon 1e-12** in every LayerNorm (fairseq builds them with 1e-5);
- the rest is RoBERTa's and BERT's alike: post-LN layers (fairseq's
  ``TransformerEncoderLayer`` with ``normalize_before=False`` is BERT's
  ``BertLayer``), exact GELU (fairseq's ``gelu`` is torch's erf form, HF's
  ``gelu``), and the MLM head dense -> gelu -> LayerNorm -> tied decoder + its
  own bias (fairseq's ``RobertaLMHead`` is BERT's ``cls.predictions``).

``encoder.hf_token_ids`` is a buffer, not a weight: the HF row of each fairseq
token id. fairseq fixes ``<s> <pad> </s> <unk>`` to ids 0-3 and appends
``<mask>`` last, while a WordPiece vocabulary puts [PAD] [UNK] [CLS] [SEP] [MASK]
wherever it likes (0, 100-103 in bert-base); ``se-convert`` permutes the
embedding rows and records the permutation here, where it survives training
(fairseq saves and restores buffers with the weights), so the way back to HF
restores the original row order bit for bit. A model built in fairseq holds the
identity.
"""

import torch
from fairseq.models import register_model, register_model_architecture
from fairseq.models.roberta.model import RobertaEncoder, RobertaModel
from fairseq.models.roberta.model import base_architecture as roberta_base_architecture
from fairseq.models.transformer import TransformerEncoder
from fairseq.modules.transformer_sentence_encoder import init_bert_params
from fairseq.utils import safe_getattr, safe_hasattr
from torch import nn

LAYER_NORM_EPS = 1e-12  # BERT's (HF BertConfig.layer_norm_eps default)


def set_layer_norm_eps(module, eps):
    """fairseq's LayerNorm() takes no epsilon from the model options: set it on every
    LayerNorm under ``module`` (torch's, or apex's fused one, which reads ``.eps`` too)."""
    for m in module.modules():
        if isinstance(m, nn.LayerNorm) or type(m).__name__ == "FusedLayerNorm":
            m.eps = eps


class BertSentenceEncoder(TransformerEncoder):
    """fairseq's TransformerEncoder with BERT's embeddings: word + type 0 + position
    (counted from 0), LayerNorm, dropout."""

    def __init__(self, args, dictionary, embed_tokens):
        super().__init__(args, dictionary, embed_tokens)
        dim = embed_tokens.embedding_dim
        # replaces the LearnedPositionalEmbedding the base class builds (positions from
        # padding_idx + 1, max_positions + 2 rows): BERT's position i is row i
        self.embed_positions = nn.Embedding(args.max_positions, dim)
        self.embed_token_types = nn.Embedding(args.type_vocab_size, dim)
        set_layer_norm_eps(self, LAYER_NORM_EPS)

    def forward_embedding(self, src_tokens, token_embedding=None):
        if token_embedding is None:
            token_embedding = self.embed_tokens(src_tokens)
        positions = self.embed_positions(torch.arange(src_tokens.size(1), device=src_tokens.device))
        # HF's order of the sums, (word + type) + position, so both round alike
        x = token_embedding + self.embed_token_types.weight[0] + positions
        x = self.layernorm_embedding(x)
        x = self.dropout_module(x)
        return x, token_embedding

    def max_positions(self):
        return self.embed_positions.num_embeddings


class BertEncoder(RobertaEncoder):
    """RoBERTa's encoder (embeddings, layers, tied LM head) with BERT's embeddings
    and LayerNorm epsilon, and the HF row order of the vocabulary."""

    def __init__(self, args, dictionary):
        super().__init__(args, dictionary)
        self.register_buffer("hf_token_ids", torch.arange(len(dictionary)))

    def build_encoder(self, args, dictionary, embed_tokens):
        encoder = BertSentenceEncoder(args, dictionary, embed_tokens)
        encoder.apply(init_bert_params)
        return encoder

    def build_lm_head(self, embed_dim, output_dim, activation_fn, weight):
        head = super().build_lm_head(embed_dim, output_dim, activation_fn, weight)
        set_layer_norm_eps(head, LAYER_NORM_EPS)  # BertPredictionHeadTransform.LayerNorm
        return head


def unsupported_options(args):
    """Options of fairseq's RoBERTa that this model does not implement, as messages."""
    problems = []
    if safe_getattr(args, "encoder_normalize_before", False):
        problems.append(
            "--encoder-normalize-before: BERT normalises after each sub-layer (post-LN)"
        )
    if not safe_getattr(args, "layernorm_embedding", True):
        problems.append("layernorm_embedding=False: BERT normalises its embeddings")
    if not safe_getattr(args, "no_scale_embedding", True):
        problems.append("no_scale_embedding=False: BERT does not scale its token embeddings")
    if safe_getattr(args, "no_token_positional_embeddings", False) or not safe_getattr(
        args, "encoder_learned_pos", True
    ):
        problems.append("no or sinusoidal positions: BERT learns absolute positions")
    if safe_getattr(args, "adaptive_input", False):
        problems.append("adaptive_input: BERT has one token embedding table")
    if safe_getattr(args, "quant_noise_pq", 0):
        problems.append("--quant-noise-pq: not implemented for BERT's embeddings")
    if safe_getattr(args, "type_vocab_size", 1) < 1:
        problems.append(f"--type-vocab-size {args.type_vocab_size}: BERT needs row 0 (type 0)")
    if safe_getattr(args, "max_positions", 1) < 1:
        problems.append(f"--max-positions {args.max_positions}: needs at least one position")
    return problems


@register_model("hf_bert")
class BertModel(RobertaModel):
    """BERT as a fairseq model: ``BertForMaskedLM``'s computation (see the module doc)."""

    @classmethod
    def hub_models(cls):
        return {}

    @staticmethod
    def add_args(parser):
        RobertaModel.add_args(parser)
        parser.add_argument(
            "--type-vocab-size",
            type=int,
            metavar="N",
            help="rows of the token-type table (BERT: 2); inputs use type 0",
        )

    @classmethod
    def build_model(cls, args, task):
        from omegaconf import OmegaConf

        if OmegaConf.is_config(args):
            OmegaConf.set_struct(args, False)
        bert_base_architecture(args)
        problems = unsupported_options(args)
        if problems:
            raise ValueError("--arch hf_bert: " + "; ".join(problems))
        encoder = BertEncoder(args, task.source_dictionary)
        if OmegaConf.is_config(args):
            OmegaConf.set_struct(args, True)
        return cls(args, encoder)


@register_model_architecture("hf_bert", "hf_bert")
def bert_base_architecture(args):
    # the position table is part of the checkpoint (512 rows in bert-base), not the
    # training block length: RoBERTa's build_model would take --tokens-per-sample
    args.max_positions = safe_getattr(args, "max_positions", 512)
    args.type_vocab_size = safe_getattr(args, "type_vocab_size", 2)
    # BertForSequenceClassification's dropout before the classifier (hidden_dropout_prob)
    args.pooler_dropout = safe_getattr(args, "pooler_dropout", 0.1)
    if not safe_hasattr(args, "activation_fn"):
        args.activation_fn = "gelu"
    roberta_base_architecture(args)


@register_model_architecture("hf_bert", "hf_bert_base")
def bert_base_preset(args):
    bert_base_architecture(args)


@register_model_architecture("hf_bert", "hf_bert_large")
def bert_large_architecture(args):
    args.encoder_layers = safe_getattr(args, "encoder_layers", 24)
    args.encoder_embed_dim = safe_getattr(args, "encoder_embed_dim", 1024)
    args.encoder_ffn_embed_dim = safe_getattr(args, "encoder_ffn_embed_dim", 4096)
    args.encoder_attention_heads = safe_getattr(args, "encoder_attention_heads", 16)
    bert_base_architecture(args)
