"""The state-dict conversion the families share: refusals of fairseq options no HF model
reproduces, and notes on those that only matter in training."""

import logging

logger = logging.getLogger("se_fairseq.convert")


def common_fairseq_problems(o, target):
    """fairseq options no HF model of the two families reproduces, as messages."""
    problems = []

    def opt(name, default=None):
        return getattr(o, name, default)

    if opt("encoder_normalize_before", False):
        problems.append(
            "pre-LN layers (encoder_normalize_before=True, e.g. --arch roberta_prenorm): "
            f"{target} normalises after each sub-layer (post-LN)"
        )
    if not opt("layernorm_embedding", True):
        problems.append(
            f"no embedding LayerNorm (layernorm_embedding=False): {target} always has one"
        )
    if opt("activation_fn", "gelu") != "gelu":
        problems.append(
            f"activation {opt('activation_fn')!r}: {target} is converted with the exact "
            "gelu only (its LM head and layers share one hidden_act)"
        )
    if opt("untie_weights_roberta", False):
        problems.append(
            f"untied LM head weights (untie_weights_roberta=True): the converter writes "
            f"the tied layout of {target}"
        )
    if not opt("no_scale_embedding", True):
        problems.append(
            f"scaled token embeddings (no_scale_embedding=False): {target} does not "
            "scale them by sqrt(embed_dim)"
        )
    if opt("no_token_positional_embeddings", False) or not opt("encoder_learned_pos", True):
        problems.append(
            f"sinusoidal or no positional embeddings: {target} has learned absolute positions only"
        )
    if opt("quant_noise_pq", 0) or opt("quant_noise_scalar", 0):
        problems.append("quant-noise (quant_noise_pq / quant_noise_scalar > 0)")
    if opt("adaptive_input", False):
        problems.append("adaptive input embeddings (adaptive_input=True)")
    if opt("encoder_layers_to_keep", None):
        problems.append("LayerDrop pruning (encoder_layers_to_keep): prune with fairseq first")
    if opt("mha_heads_to_keep", -1) != -1 or opt("ffn_blocks_to_remove", -1) != -1:
        problems.append("AdaPrune head/FFN pruning (mha_heads_to_keep / ffn_blocks_to_remove)")
    return problems


def training_only_warnings(o):
    if float(getattr(o, "activation_dropout", 0.0) or 0.0) > 0:
        logger.warning(
            f"activation_dropout={o.activation_dropout} has no HF counterpart (training only)"
        )
    if float(getattr(o, "encoder_layerdrop", 0.0) or 0.0) > 0:
        logger.warning(
            f"encoder_layerdrop={o.encoder_layerdrop} has no HF counterpart (training only)"
        )
