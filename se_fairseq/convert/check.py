"""``check=True``: build the fairseq model from the converted weights and compare its
logits with the HF model's on a sample batch."""

from .dictionaries import BOS, EOS, MASK, PAD, SPECIALS, placeholder_dictionary
from .errors import CheckFailedError
from .fairseq_io import checkpoint_arch, model_options

CHECK_TOLERANCE = 1e-4


def build_fairseq_model(model_cfg, state_dict, dictionary=None):
    """The fairseq model of ``--arch`` of ``model_cfg`` with these weights, in eval mode
    (fairseq upgrades old key names while loading)."""
    import copy
    import types

    from fairseq.models import ARCH_MODEL_REGISTRY

    o = model_options(model_cfg)
    vocab = next(
        v for k, v in state_dict.items() if k.endswith("sentence_encoder.embed_tokens.weight")
    ).shape[0]
    if dictionary is None:
        dictionary = placeholder_dictionary(vocab)
    elif MASK not in dictionary.indices:
        dictionary = copy.deepcopy(dictionary)
        dictionary.add_symbol(MASK)
    task = types.SimpleNamespace(
        source_dictionary=dictionary,
        target_dictionary=dictionary,
        max_positions=lambda: o.max_positions,
    )
    model = ARCH_MODEL_REGISTRY[checkpoint_arch(model_cfg)].build_model(o, task)
    model.load_state_dict(dict(state_dict), strict=True)
    return model.float().eval()


def sample_batch(vocab_size, max_positions, seed=0):
    """Two sequences ``<s> ... </s>`` of fairseq ids, the second one right-padded."""
    import torch

    g = torch.Generator().manual_seed(seed)
    length = max(3, min(16, max_positions))
    ids = torch.randint(len(SPECIALS), vocab_size - 1, (2, length), generator=g)
    ids[:, 0], ids[:, -1] = BOS, EOS
    short = max(3, length // 2)
    ids[1, short - 1], ids[1, short:] = EOS, PAD
    return ids


def max_logit_difference(fairseq_model, hf_model, tokens, token_ids=None):
    """max |fairseq logits - HF logits| over the non-pad positions of ``tokens`` (fairseq
    ids). The HF model reads ``token_ids[tokens]`` and its logits are put back in
    fairseq's order (``token_ids``: the HF row of each fairseq id; None: the same)."""
    import torch

    hf_tokens = tokens if token_ids is None else token_ids[tokens]
    with torch.no_grad():
        fs = fairseq_model(tokens)[0].float()
        hf = (
            hf_model.float()
            .eval()(input_ids=hf_tokens, attention_mask=tokens.ne(PAD).long())
            .logits
        )
    if token_ids is not None:
        hf = hf[..., token_ids]
    keep = tokens.ne(PAD)
    return (fs[keep] - hf[keep]).abs().max().item()


def check_logits(fairseq_model, hf_model, model, result, token_ids=None):
    """Set ``result.max_logit_difference``; :class:`CheckFailedError` above the tolerance."""
    diff = max_logit_difference(
        fairseq_model,
        hf_model,
        sample_batch(model["vocab_size"], model["max_positions"]),
        token_ids,
    )
    result.max_logit_difference = diff
    if diff > CHECK_TOLERANCE:
        raise CheckFailedError(
            f"--check: fairseq and HF logits differ by {diff:.3g} "
            f"(> {CHECK_TOLERANCE:g}); the converted files are wrong",
            result,
        )
    return result
