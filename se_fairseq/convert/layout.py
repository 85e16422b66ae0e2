"""The state-dict layout the families share: fairseq's ``RobertaEncoder`` names (roberta
and hf_bert both build on it) and BERT's names of an HF encoder layer, and the checks
that a state dict has exactly the tensors of a model."""

from .errors import ConversionError, listed

ENCODER_VERSION = 3.0  # value of fairseq 0.12's TransformerEncoderBase ``version`` buffer


FS = "encoder.sentence_encoder."


FS_HEAD = "encoder.lm_head."


LAYER = (  # fairseq (under FS + layers.i.) -> HF (under <model>.encoder.layer.i.), BERT's names
    ("self_attn.k_proj", "attention.self.key"),
    ("self_attn.v_proj", "attention.self.value"),
    ("self_attn.q_proj", "attention.self.query"),
    ("self_attn.out_proj", "attention.output.dense"),
    ("self_attn_layer_norm", "attention.output.LayerNorm"),
    ("fc1", "intermediate.dense"),
    ("fc2", "output.dense"),
    ("final_layer_norm", "output.LayerNorm"),
)


def num_layers(keys, prefix):
    import re

    found = {
        int(m.group(1)) for k in keys for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m
    }
    if found and found != set(range(max(found) + 1)):
        raise ConversionError(f"layers {sorted(set(range(max(found) + 1)) - found)} are missing")
    return max(found) + 1 if found else 0


def tensor_problems(present, expected, model, *, optional=(), skipped=lambda key: False, head=None):
    """Why the tensors ``present`` are not exactly ``model``'s: tensors beyond ``expected``
    and ``optional`` (those ``skipped`` says to pass over aside), and ``expected`` ones
    missing, in ``expected``'s order (with a hint where the masked-LM ``head`` prefix
    is among them)."""
    present = set(present)
    extra = sorted(k for k in present - set(expected) - set(optional) if not skipped(k))
    missing = [k for k in expected if k not in present]
    problems = []
    if extra:
        problems.append(f"unexpected tensors {listed(extra)}: not a plain {model}")
    if missing:
        hint = (
            f" (no masked-LM head: save a {model})"
            if head and any(k.startswith(head) for k in missing)
            else ""
        )
        problems.append(f"missing tensors {listed(missing)}{hint}")
    return problems
