"""Text -> the checkpoint's own symbols, with fairseq's own BPE encoders and local files only.

- ``gpt2``: released RoBERTa's byte-level BPE (``encoder.json`` + ``vocab.bpe`` by path),
  through fairseq's ``GPT2BPE``, as ``examples/roberta/multiprocessing_bpe_encoder.py``
  does for GLUE: each line becomes the space-separated BPE ids that ``dict.txt`` lists.
- ``sentencepiece``: a SentencePiece model by path, through fairseq's ``SentencepieceBPE``
  (space-separated pieces, as ``spm_encode --output_format=piece`` writes).
- ``none``: the text is already space-separated symbols of the dictionary.

Nothing is ever downloaded: a URL or a missing file is an error naming the option.
"""

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from se_fairseq.finetune.checkpoint import first_line
from se_fairseq.finetune.errors import FinetuneError

BPE_KINDS = ("gpt2", "sentencepiece", "none")


@dataclass(frozen=True)
class TokenizerSpec:
    kind: str
    files: tuple[tuple[str, str], ...] = ()  # (option, path) pairs

    def identity(self) -> str:
        """A short hash of the tokenizer: kind and file contents."""
        h = hashlib.sha256(self.kind.encode())
        for option, path in self.files:
            h.update(option.encode())
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
        return h.hexdigest()[:12]


def _local_file(option: str, path: Optional[str]) -> str:
    if not path:
        raise FinetuneError(f"missing BPE file: give {option} PATH (nothing is downloaded)")
    if "://" in str(path):
        raise FinetuneError(
            f"missing BPE file: {option} is the URL {path} (the checkpoint's cfg.bpe; "
            "fairseq-train records GPT-2 BPE with these URLs by default, also for data tokenized "
            "otherwise): give "
            f"{option} PATH of a local copy, or --bpe sentencepiece/none if the model was trained "
            "with another tokenization (nothing is downloaded here)"
        )
    if not os.path.isfile(path):
        raise FinetuneError(f"missing BPE file: {option} {path} does not exist")
    return os.path.abspath(path)


def tokenizer_spec(
    bpe: Optional[str] = None,
    gpt2_encoder_json: Optional[str] = None,
    gpt2_vocab_bpe: Optional[str] = None,
    sentencepiece_model: Optional[str] = None,
    checkpoint_bpe: Optional[Mapping[str, Any]] = None,
) -> TokenizerSpec:
    """Resolve the tokenizer from explicit options, else from the checkpoint's own cfg.bpe."""
    checkpoint_bpe = checkpoint_bpe or {}
    if bpe is None:
        bpe = checkpoint_bpe.get("_name")
        if bpe is None:
            if gpt2_encoder_json or gpt2_vocab_bpe:
                bpe = "gpt2"
            elif sentencepiece_model:
                bpe = "sentencepiece"
            else:
                raise FinetuneError(
                    "the checkpoint records no BPE (cfg.bpe): give --bpe gpt2 with "
                    "--gpt2-encoder-json/--gpt2-vocab-bpe, --bpe sentencepiece with "
                    "--sentencepiece-model, or --bpe none for pre-tokenized text"
                )
    if bpe not in BPE_KINDS:
        raise FinetuneError(f"--bpe must be one of {BPE_KINDS}, got {bpe!r}")
    if bpe == "gpt2":
        return TokenizerSpec(
            "gpt2",
            (
                (
                    "--gpt2-encoder-json",
                    _local_file(
                        "--gpt2-encoder-json",
                        gpt2_encoder_json or checkpoint_bpe.get("gpt2_encoder_json"),
                    ),
                ),
                (
                    "--gpt2-vocab-bpe",
                    _local_file(
                        "--gpt2-vocab-bpe", gpt2_vocab_bpe or checkpoint_bpe.get("gpt2_vocab_bpe")
                    ),
                ),
            ),
        )
    if bpe == "sentencepiece":
        return TokenizerSpec(
            "sentencepiece",
            (
                (
                    "--sentencepiece-model",
                    _local_file(
                        "--sentencepiece-model",
                        sentencepiece_model or checkpoint_bpe.get("sentencepiece_model"),
                    ),
                ),
            ),
        )
    return TokenizerSpec("none")


def check_gpt2_files(encoder_json: str, vocab_bpe: str) -> None:
    """encoder.json must be a JSON object of piece -> id, vocab.bpe lines of merges (two
    pieces): a FinetuneError naming the file, before fairseq's reader fails on it."""
    try:
        with open(encoder_json, encoding="utf-8") as f:
            encoder = json.load(f)
    except (ValueError, OSError) as err:
        raise FinetuneError(
            f"--gpt2-encoder-json {encoder_json}: not a GPT-2 encoder.json (a JSON object of "
            f"BPE piece -> id): {first_line(err)}"
        ) from None
    if not isinstance(encoder, dict) or not encoder:
        raise FinetuneError(
            f"--gpt2-encoder-json {encoder_json}: not a GPT-2 encoder.json (expected a "
            f"non-empty JSON object of BPE piece -> id, got {type(encoder).__name__})"
        )
    try:
        with open(vocab_bpe, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (UnicodeDecodeError, OSError) as err:
        raise FinetuneError(
            f"--gpt2-vocab-bpe {vocab_bpe}: not a GPT-2 vocab.bpe: {first_line(err)}"
        ) from None
    for lineno, line in enumerate(lines[1:-1], start=2):  # as fairseq reads it
        if len(line.split()) != 2:
            raise FinetuneError(
                f"--gpt2-vocab-bpe {vocab_bpe}, line {lineno}: not a BPE merge (two pieces): "
                f"{line[:60]!r}"
            )


class Tokenizer:
    """``encode(line) -> str`` of space-separated dictionary symbols."""

    def __init__(self, spec: TokenizerSpec) -> None:
        self.spec = spec
        self._bpe: Any  # fairseq's GPT2BPE or SentencepieceBPE; None: pre-tokenized text
        files = dict(spec.files)
        if spec.kind == "gpt2":
            from fairseq.data.encoders.gpt2_bpe import GPT2BPE, GPT2BPEConfig

            check_gpt2_files(files["--gpt2-encoder-json"], files["--gpt2-vocab-bpe"])

            self._bpe = GPT2BPE(
                GPT2BPEConfig(
                    gpt2_encoder_json=files["--gpt2-encoder-json"],
                    gpt2_vocab_bpe=files["--gpt2-vocab-bpe"],
                )
            )
        elif spec.kind == "sentencepiece":
            from fairseq.data.encoders.sentencepiece_bpe import (
                SentencepieceBPE,
                SentencepieceConfig,
            )

            model = files["--sentencepiece-model"]
            try:
                self._bpe = SentencepieceBPE(SentencepieceConfig(sentencepiece_model=model))
            except (RuntimeError, OSError, ValueError) as err:
                raise FinetuneError(
                    f"--sentencepiece-model {model}: not a SentencePiece model: {first_line(err)}"
                ) from None
        else:
            self._bpe = None

    def encode(self, text: str) -> str:
        text = text.strip()
        if self._bpe is None:
            return " ".join(text.split())
        return self._bpe.encode(text)
