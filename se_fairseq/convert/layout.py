"""The state-dict layout the families share: fairseq's ``RobertaEncoder`` names (roberta
and hf_bert both build on it), BERT's names of an HF encoder layer, the key tables a
family's own names (embeddings, LM head) complete, and the checks that a state dict has
exactly the tensors of a model."""

from .errors import ConversionError, listed

ENCODER_VERSION = 3.0  # value of fairseq 0.12's TransformerEncoderBase ``version`` buffer

FS = "encoder.sentence_encoder."
FS_HEAD = "encoder.lm_head."
# the rows indexed by token id: permuted where a family's HF vocabulary is in another order
PERMUTED = (FS + "embed_tokens.weight", FS_HEAD + "bias")
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


def fairseq_keys(family, layers):
    """The state-dict keys of the family's fairseq model, in the order fairseq writes them:
    the version, ``family.embeddings``, the layers, the tied LM-head weight,
    ``family.lm_head``, then ``family.token_ids_key`` where the family has one."""
    keys = [FS + "version"] + [FS + fs for fs, _ in family.embeddings]
    for i in range(layers):
        for fs, _ in LAYER:
            keys += [f"{FS}layers.{i}.{fs}.weight", f"{FS}layers.{i}.{fs}.bias"]
    keys.append(FS_HEAD + "weight")
    keys += [FS_HEAD + fs for fs, _ in family.lm_head]
    return keys + ([family.token_ids_key] if family.token_ids_key else [])


def key_pairs(family, layers):
    """(fairseq key, HF key) for every tensor both sides have."""
    hf, hf_head = family.hf_prefix, family.hf_head_prefix
    pairs = [(FS + fs, hf + name) for fs, name in family.embeddings]
    for i in range(layers):
        for fs, name in LAYER:
            for p in ("weight", "bias"):
                pairs.append((f"{FS}layers.{i}.{fs}.{p}", f"{hf}encoder.layer.{i}.{name}.{p}"))
    pairs += [(FS_HEAD + fs, hf_head + name) for fs, name in family.lm_head]
    return pairs


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
