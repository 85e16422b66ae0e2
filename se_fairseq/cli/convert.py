"""``se-convert``: fairseq RoBERTa checkpoints <-> Hugging Face ``RobertaForMaskedLM``.

    se-convert to-hf CKPT OUT_DIR [--dict DICT] [--check] [--force]
    se-convert from-hf HF_DIR OUT.pt [--check] [--force]

``to-hf`` writes ``config.json`` and ``model.safetensors`` (what
``RobertaForMaskedLM.from_pretrained(OUT_DIR)`` loads) plus the fairseq
dictionary as ``fairseq_dict.txt``. ``from-hf`` writes a fairseq checkpoint
(plain containers only, so ``torch.load(weights_only=True)`` reads it) that
``fairseq-train --restore-file`` continues, and ``dict.txt`` beside it.
Architectures the other side cannot reproduce are refused, never converted
approximately. Needs the extras: ``pip install 'se-fairseq[hf]'``.
"""
import argparse
import json
import logging
import os
import shutil
import sys

logger = logging.getLogger("se_fairseq.convert")

CHECK_TOLERANCE = 1e-3  # max |logit difference| that --check accepts (float32)
HF_OUTPUTS = ("config.json", "model.safetensors", "fairseq_dict.txt")


def build_parser():
    p = argparse.ArgumentParser(
        prog="se-convert",
        description="Convert RoBERTa masked-LM checkpoints between fairseq and Hugging Face "
        "transformers (RobertaForMaskedLM). Needs: pip install 'se-fairseq[hf]'.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{to-hf,from-hf}")

    to = sub.add_parser("to-hf", help="fairseq checkpoint -> HF model directory",
                        description="Write config.json, model.safetensors and fairseq_dict.txt "
                        "into OUT_DIR for RobertaForMaskedLM.from_pretrained(OUT_DIR).")
    to.add_argument("checkpoint", metavar="CKPT", help="fairseq RoBERTa checkpoint (.pt)")
    to.add_argument("out_dir", metavar="OUT_DIR", help="output directory (created)")
    to.add_argument("--dict", default=None, metavar="DICT",
                    help="the model's fairseq dict.txt (default: dict.txt beside CKPT)")
    to.set_defaults(func=to_hf)

    back = sub.add_parser("from-hf", help="HF model directory -> fairseq checkpoint",
                          description="Write a fairseq checkpoint that fairseq-train --restore-file "
                          "continues, and dict.txt beside it (from HF_DIR/fairseq_dict.txt, else "
                          "the tokenizer vocab, else placeholder words).")
    back.add_argument("hf_dir", metavar="HF_DIR", help="directory of a saved RobertaForMaskedLM")
    back.add_argument("out", metavar="OUT.pt", help="fairseq checkpoint to write")
    back.set_defaults(func=from_hf)

    for s in (to, back):
        s.add_argument("--check", action="store_true",
                       help="load both models and compare their logits on a sample batch "
                       f"(fails above {CHECK_TOLERANCE:g})")
        s.add_argument("--force", action="store_true", help="overwrite existing output files")
    return p


# -- helpers ------------------------------------------------------------------------

def _quiet(transformers):
    """Loading problems are reported by se-convert itself, as refusals; no progress bars."""
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _import_fairseq():
    import fairseq  # noqa: F401

    import se_fairseq

    se_fairseq.register_with_fairseq()  # safe torch.load (also when autoload is off)


def _unshared(state_dict):
    """Contiguous tensors that own their memory (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for key, t in state_dict.items():
        t = t.detach().contiguous()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def _load_dictionary(path):
    from fairseq.data import Dictionary

    from se_fairseq.convert import ConversionError

    try:
        return Dictionary.load(path)
    except Exception as err:
        raise ConversionError(f"{path}: not a fairseq dict.txt ({err})") from None


def _check(fairseq_model, hf_model, vocab_size, max_positions):
    from se_fairseq import convert

    diff = convert.max_logit_difference(fairseq_model, hf_model,
                                        convert.sample_batch(vocab_size, max_positions))
    if diff > CHECK_TOLERANCE:
        raise convert.ConversionError(f"--check: fairseq and HF logits differ by {diff:.3g} "
                                      f"(> {CHECK_TOLERANCE:g}); the converted files are wrong")
    print(f"check: fairseq and HF logits agree (max |difference| {diff:.2g})")


# -- to-hf ----------------------------------------------------------------------------

def to_hf(args):
    from se_fairseq import convert

    transformers = convert.require_transformers()
    from safetensors.torch import save_file

    _import_fairseq()
    from fairseq import checkpoint_utils

    if not os.path.isfile(args.checkpoint):
        raise convert.ConversionError(f"{args.checkpoint}: no such checkpoint")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise convert.ConversionError(f"{args.out_dir} exists and is not a directory")
    clash = [f for f in HF_OUTPUTS if os.path.exists(os.path.join(args.out_dir, f))]
    if clash and not args.force:
        raise convert.ConversionError(f"{args.out_dir} already holds {', '.join(clash)} (--force overwrites)")
    if os.path.exists(os.path.join(args.out_dir, "model.safetensors.index.json")):
        raise convert.ConversionError(f"{args.out_dir} holds a sharded model; use an empty directory")

    dict_path = args.dict or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "dict.txt")
    if args.dict and not os.path.isfile(args.dict):
        raise convert.ConversionError(f"{args.dict}: no such dictionary")
    dictionary = _load_dictionary(dict_path) if os.path.isfile(dict_path) else None
    if dictionary is None:
        logger.warning(f"no dict.txt beside {args.checkpoint} (and no --dict): converting the weights "
                       "only; OUT_DIR gets no fairseq_dict.txt, so a later from-hf cannot restore the "
                       "vocabulary exactly")

    state = checkpoint_utils.load_checkpoint_to_cpu(args.checkpoint)
    model_cfg = convert.checkpoint_model_cfg(state)
    config, hf_sd = convert.fairseq_to_hf(state["model"], model_cfg, dictionary)

    os.makedirs(args.out_dir, exist_ok=True)
    config.save_pretrained(args.out_dir)
    save_file(_unshared(hf_sd), os.path.join(args.out_dir, "model.safetensors"), metadata={"format": "pt"})
    if dictionary is not None:
        shutil.copyfile(dict_path, os.path.join(args.out_dir, "fairseq_dict.txt"))
    print(f"wrote {args.out_dir}: RobertaForMaskedLM with {config.num_hidden_layers} layers, hidden "
          f"{config.hidden_size}, {config.vocab_size} ids, {config.max_position_embeddings - 2} positions"
          + (" (+ fairseq_dict.txt)" if dictionary is not None else ""))
    print("note: pass attention_mask (input_ids != 1) to the HF model for padded batches; "
          "fairseq masks <pad> by itself")

    if args.check:
        _quiet(transformers)
        hf_model = transformers.RobertaForMaskedLM.from_pretrained(args.out_dir, local_files_only=True)
        fs_model = convert.build_fairseq_model(model_cfg, state["model"], dictionary)
        _check(fs_model, hf_model, config.vocab_size, config.max_position_embeddings - 2)
    return 0


# -- from-hf --------------------------------------------------------------------------

def _dict_text(hf_dir, vocab_size):
    """(dict.txt contents, where they came from) for a model with vocab_size ids."""
    from se_fairseq import convert

    fairseq_dict = os.path.join(hf_dir, "fairseq_dict.txt")
    if os.path.isfile(fairseq_dict):
        d = _load_dictionary(fairseq_dict)
        if len(d) + 1 != vocab_size:
            raise convert.ConversionError(
                f"{fairseq_dict} gives {len(d) + 1} ids (incl. <mask>) but the model has {vocab_size}")
        with open(fairseq_dict, encoding="utf-8") as f:
            return f.read(), "fairseq_dict.txt"
    vocab = convert.read_hf_vocab(hf_dir)
    words, placeholders = convert.dict_words_from_vocab(vocab, vocab_size)
    text = "".join(f"{w} 1\n" for w in words)
    if vocab is None:
        logger.warning(f"{hf_dir} has neither fairseq_dict.txt nor a tokenizer vocab (vocab.json, "
                       f"tokenizer.json): dict.txt gets placeholder words madeupwordNNNN for ids "
                       f"4..{vocab_size - 2}; binarize data only with ids that match the model's")
        return text, "placeholders"
    if placeholders:
        logger.warning(f"{placeholders} of {len(words)} ids have no usable token in the tokenizer "
                       "vocab; dict.txt holds madeupwordNNNN placeholders for them")
    return text, "the tokenizer vocab"


def from_hf(args):
    import torch

    from se_fairseq import convert
    from se_fairseq.checkpoint_safety import allowed_globals

    transformers = convert.require_transformers()
    _import_fairseq()

    config_path = os.path.join(args.hf_dir, "config.json")
    if not os.path.isfile(config_path):
        raise convert.ConversionError(f"{args.hf_dir}: no config.json (not a saved HF model directory)")
    out = os.path.abspath(args.out)
    out_dir = os.path.dirname(out)
    dict_out = os.path.join(out_dir, "dict.txt")
    if os.path.exists(out) and not args.force:
        raise convert.ConversionError(f"{args.out} exists (--force overwrites)")

    with open(config_path, encoding="utf-8") as f:
        raw_config = json.load(f)
    problems = convert.check_hf_config(raw_config)
    if problems:
        convert.refuse("this Hugging Face model", problems)

    _quiet(transformers)
    config = transformers.RobertaConfig.from_pretrained(args.hf_dir, local_files_only=True)
    model, info = transformers.RobertaForMaskedLM.from_pretrained(
        args.hf_dir, config=config, local_files_only=True, output_loading_info=True, dtype="auto")
    missing = sorted(info.get("missing_keys") or [])
    mismatched = [str(m[0]) if isinstance(m, (list, tuple)) else str(m) for m in info.get("mismatched_keys") or []]
    unexpected = sorted(k for k in info.get("unexpected_keys") or []
                        if not (convert.HF_DROPPED.match(k) or convert.HF_IGNORED.match(k)))
    if missing or mismatched or unexpected:
        convert.refuse(f"{args.hf_dir}", [
            *([f"weights missing from the files (HF would initialise them randomly): {missing[:8]}"]
              if missing else []),
            *([f"weights of the wrong shape: {mismatched[:8]}"] if mismatched else []),
            *([f"weights RobertaForMaskedLM does not use: {unexpected[:8]}"] if unexpected else []),
        ])
    options, fs_sd = convert.hf_to_fairseq(config, model.state_dict())
    text, source = _dict_text(args.hf_dir, options["vocab_size"])
    if os.path.exists(dict_out) and not args.force:
        with open(dict_out, encoding="utf-8") as f:
            if f.read() != text:
                raise convert.ConversionError(f"{dict_out} exists with other contents (--force overwrites)")

    checkpoint = convert.fairseq_checkpoint(options, fs_sd, out_dir)
    os.makedirs(out_dir, exist_ok=True)
    tmp = out + ".tmp"
    torch.save(checkpoint, tmp)
    found, aliases = allowed_globals()
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in found} | {name for _, name in aliases}
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(tmp)) - allowed
    if unsafe:  # cannot happen with plain containers; never leave such a file behind
        os.remove(tmp)
        raise convert.ConversionError(f"internal error: the checkpoint would pickle {sorted(unsafe)}")
    os.replace(tmp, out)
    from se_fairseq.data.score_file import atomic_write_text

    atomic_write_text(dict_out, text)
    print(f"wrote {args.out}: fairseq RoBERTa with {options['encoder_layers']} layers, embed "
          f"{options['encoder_embed_dim']}, {options['vocab_size']} ids, {options['max_positions']} "
          f"positions; and {dict_out} (from {source})")
    print(f"continue it with: fairseq-train DATA --restore-file {args.out} --arch roberta "
          f"--encoder-layers {options['encoder_layers']} --encoder-embed-dim {options['encoder_embed_dim']} "
          f"--encoder-ffn-embed-dim {options['encoder_ffn_embed_dim']} --encoder-attention-heads "
          f"{options['encoder_attention_heads']} --max-positions {options['max_positions']} "
          "--reset-optimizer ... (DATA binarized with this dict.txt)")

    if args.check:
        from fairseq import checkpoint_utils

        state = checkpoint_utils.load_checkpoint_to_cpu(out)
        fs_model = convert.build_fairseq_model(state["cfg"]["model"], state["model"], _load_dictionary(dict_out))
        _check(fs_model, model, options["vocab_size"], options["max_positions"])
    return 0


# -- entry points --------------------------------------------------------------------

def main(argv=None):
    import warnings

    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)  # hydra chatter
    warnings.filterwarnings("ignore", module="hydra")
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO, stream=sys.stderr)
    from se_fairseq.checkpoint_safety import UnsafeCheckpointError
    from se_fairseq.convert import ConversionError, MissingDependencyError

    try:
        return args.func(args)
    except MissingDependencyError as err:
        print(f"se-convert: {err}", file=sys.stderr)
        return 1
    except (ConversionError, UnsafeCheckpointError) as err:
        print(f"se-convert: error: {err}", file=sys.stderr)
        return 1


def cli_main():
    sys.exit(main())


if __name__ == "__main__":
    cli_main()
