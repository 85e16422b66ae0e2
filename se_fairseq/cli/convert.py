"""``se-convert``: fairseq checkpoints <-> Hugging Face masked LMs (RoBERTa, BERT).

    se-convert to-hf CKPT OUT_DIR [--dict DICT] [--tokenizer DIR] [--check] [--force]
    se-convert from-hf HF_DIR OUT.pt [--check] [--force]
    se-convert tokenize MODEL_DIR TEXT... --out-dir DIR [--force]

``to-hf`` writes ``config.json`` and ``model.safetensors`` (what
``RobertaForMaskedLM`` / ``BertForMaskedLM.from_pretrained(OUT_DIR)`` loads) plus
the fairseq dictionary as ``fairseq_dict.txt`` (and, for BERT, the tokenizer).
``from-hf`` writes a fairseq checkpoint (plain containers only, so
``torch.load(weights_only=True)`` reads it) that ``fairseq-train --restore-file``
continues, and ``dict.txt`` beside it (for BERT also ``tokenizer/``). ``tokenize``
writes raw text as a BERT checkpoint's WordPiece pieces for ``fairseq-preprocess
--srcdict MODEL_DIR/dict.txt``. Architectures the other side cannot reproduce are
refused, never converted approximately. Needs the extras: ``pip install
'se-fairseq[hf]'``.

This module only parses arguments, calls :func:`se_fairseq.convert.fairseq_to_hf`,
:func:`se_fairseq.convert.hf_to_fairseq` or :func:`se_fairseq.convert.bert.tokenize_files`
(which hold every rule), prints what they wrote and maps their errors to exit codes
(the library's ``overwrite=True`` is ``--force`` here).
"""

import argparse
import importlib
import importlib.util
import logging
import os
import sys

from se_fairseq import convert

logger = logging.getLogger(__name__)


def build_parser():
    p = argparse.ArgumentParser(
        prog="se-convert",
        description="Convert masked-LM checkpoints between fairseq and Hugging Face transformers: "
        "RoBERTa (--arch roberta* <-> RobertaForMaskedLM) and BERT (--arch hf_bert* <-> "
        "BertForMaskedLM), chosen from the input. Needs: pip install 'se-fairseq[hf]'.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{to-hf,from-hf,tokenize}")

    to = sub.add_parser(
        "to-hf",
        help="fairseq checkpoint -> HF model directory",
        description="Write config.json, model.safetensors and fairseq_dict.txt "
        "into OUT_DIR for RobertaForMaskedLM / BertForMaskedLM.from_pretrained(OUT_DIR); "
        "a BERT model also gets its tokenizer, in HF's original token order.",
    )
    to.add_argument(
        "checkpoint", metavar="CKPT", help="fairseq checkpoint (.pt): --arch roberta* or hf_bert*"
    )
    to.add_argument("out_dir", metavar="OUT_DIR", help="output directory (created)")
    to.add_argument(
        "--dict",
        default=None,
        metavar="DICT",
        help="the model's fairseq dict.txt (default: dict.txt beside CKPT)",
    )
    to.add_argument(
        "--tokenizer",
        default=None,
        metavar="DIR",
        help="BERT: the tokenizer to write (a folder with tokenizer.json or vocab.txt, or "
        "with a tokenizer/ folder; default: tokenizer/ beside DICT, else beside CKPT)",
    )
    to.set_defaults(func=to_hf)

    back = sub.add_parser(
        "from-hf",
        help="HF model directory -> fairseq checkpoint",
        description="Write a fairseq checkpoint that fairseq-train --restore-file "
        "continues, and dict.txt beside it (RoBERTa: from HF_DIR/fairseq_dict.txt, "
        "else the tokenizer vocab, else placeholder words; BERT: from the tokenizer, "
        "saved beside it as tokenizer/).",
    )
    back.add_argument(
        "hf_dir",
        metavar="HF_DIR",
        help="directory of a saved RobertaForMaskedLM or BertForMaskedLM",
    )
    back.add_argument("out", metavar="OUT.pt", help="fairseq checkpoint to write")
    back.set_defaults(func=from_hf)

    for s in (to, back):
        s.add_argument(
            "--check",
            action="store_true",
            help="load both models and compare their logits on a sample batch "
            f"(fails above {convert.CHECK_TOLERANCE:g})",
        )

    tok = sub.add_parser(
        "tokenize",
        help="raw text -> a BERT checkpoint's WordPiece pieces",
        description="Tokenize raw text files (one sequence per line) with the "
        "tokenizer of a converted BERT checkpoint (lower-casing as its config says) "
        "into OUT_DIR/<same name>, as the pieces fairseq-preprocess --only-source "
        "--srcdict MODEL_DIR/dict.txt binarizes to the checkpoint's ids.",
    )
    tok.add_argument(
        "model_dir",
        metavar="MODEL_DIR",
        help="what se-convert from-hf wrote: dict.txt and tokenizer/",
    )
    tok.add_argument("inputs", metavar="TEXT", nargs="+", help="raw text files")
    tok.add_argument("--out-dir", required=True, metavar="DIR", help="output directory (created)")
    tok.set_defaults(func=tokenize)

    for s in (to, back, tok):
        s.add_argument("--force", action="store_true", help="overwrite existing output files")
    return p


# -- environment -------------------------------------------------------------------


def hide_broken_torchaudio():
    """transformers imports torchaudio whenever it is installed; a build that does not
    match torch (fairseq pulls one in) then breaks ``import transformers``. Nothing
    here uses audio, so let transformers see it as absent instead.

    A process-wide workaround for a broken environment (it edits ``sys.modules``), so
    it lives in the command, not in the library; ``examples/setup.sh`` installs a
    torchaudio that loads, or none, which makes it a no-op."""
    if "torchaudio" in sys.modules or importlib.util.find_spec("torchaudio") is None:
        return
    try:
        importlib.import_module("torchaudio")
    except Exception as err:  # OSError from its C++ library, ImportError, RuntimeError
        logger.debug(f"torchaudio does not load ({err}); hiding it from transformers")
        sys.modules["torchaudio"] = None


# -- the two commands ------------------------------------------------------------------

HF_CLASS = {"roberta": "RobertaForMaskedLM", "bert": "BertForMaskedLM"}


def _print_check(result):
    print(
        f"check: fairseq and HF logits agree (max |difference| {result.max_logit_difference:.2g})"
    )


def _print_to_hf(args, result):
    m = result.model
    print(
        f"wrote {args.out_dir}: {HF_CLASS[result.family]} with {m['layers']} layers, hidden "
        f"{m['hidden']}, {m['vocab_size']} ids, {m['max_positions']} positions"
        + (" (+ fairseq_dict.txt)" if result.dict_path is not None else "")
    )
    pad = "input_ids != 1" if result.family == "roberta" else "input_ids != config.pad_token_id"
    print(
        f"note: pass attention_mask ({pad}) to the HF model for padded batches; "
        "fairseq masks <pad> by itself"
    )


def _print_from_hf(args, result):
    m = result.model
    print(
        f"wrote {args.out}: fairseq {result.fairseq_args[1]} with {m['layers']} layers, embed "
        f"{m['hidden']}, {m['vocab_size']} ids, {m['max_positions']} "
        f"positions; and {result.dict_path} (from {result.dict_source})"
        + (
            f" and {os.path.join(os.path.dirname(result.dict_path), 'tokenizer')}/"
            if result.family == "bert"
            else ""
        )
    )
    print(
        f"continue it with: fairseq-train DATA --restore-file {args.out} "
        f"{' '.join(result.fairseq_args)} --reset-optimizer ... (DATA binarized with this dict.txt)"
    )


def _run(report, convert_fn, args, *paths, **options):
    try:
        result = convert_fn(*paths, check=args.check, overwrite=args.force, **options)
    except convert.CheckFailedError as err:
        report(args, err.result)  # the files were written; say which before the error
        raise
    report(args, result)
    if args.check:
        _print_check(result)
    return 0


def to_hf(args):
    return _run(
        _print_to_hf,
        convert.fairseq_to_hf,
        args,
        args.checkpoint,
        args.out_dir,
        dict_path=args.dict,
        tokenizer_dir=args.tokenizer,
    )


def from_hf(args):
    return _run(_print_from_hf, convert.hf_to_fairseq, args, args.hf_dir, args.out)


def tokenize(args):
    from se_fairseq.convert.bert import tokenize_files

    for path, lines, pieces in tokenize_files(
        args.model_dir, args.inputs, args.out_dir, overwrite=args.force
    ):
        print(f"wrote {path}: {lines} lines, {pieces} pieces")
    print(
        f"binarize with: fairseq-preprocess --only-source --srcdict "
        f"{os.path.join(args.model_dir, 'dict.txt')} --trainpref ... --destdir data-bin"
    )
    return 0


# -- entry points --------------------------------------------------------------------


def main(argv=None):
    import warnings

    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)  # hydra chatter
    warnings.filterwarnings("ignore", module="hydra")
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
        level=logging.INFO,
        stream=sys.stderr,
    )
    from se_fairseq.checkpoint_safety import UnsafeCheckpointError

    hide_broken_torchaudio()
    try:
        return args.func(args)
    except convert.MissingDependencyError as err:
        print(f"se-convert: {err}", file=sys.stderr)
        return 1
    except convert.OutputExistsError as err:
        print(f"se-convert: error: {err.what} (--force overwrites)", file=sys.stderr)
        return 1
    except (convert.ConversionError, UnsafeCheckpointError) as err:
        print(f"se-convert: error: {err}", file=sys.stderr)
        return 1


def cli_main():
    sys.exit(main())


if __name__ == "__main__":
    cli_main()
