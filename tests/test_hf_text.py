"""se_fairseq.hf.tokenize_text_files against run_mlm.py's tokenization written out plainly:
lines read with Python, tokenized one at a time, grouped per map batch of 1,000 lines."""

import numpy as np
import pytest
from support.hf_tokenizers import HF_WORDS, tiny_bert_tokenizer, tiny_roberta_tokenizer

from se_fairseq.hf import tokenize_text_files

MAP_BATCH = 1000  # datasets' Dataset.map default batch size, which run_mlm.py keeps


def write_lines(path, count, seed, newline="\n"):
    """``count`` random lines, some blank or only whitespace, some too long for a block."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        if i % 17 == 3:
            lines.append("")
        elif i % 29 == 5:
            lines.append("   \t ")
        else:
            n = int(rng.integers(1, 40 if i % 11 == 0 else 12))
            lines.append(" ".join(rng.choice(HF_WORDS, size=n)))
    path.write_text(newline.join(lines) + newline, newline="")
    return lines


def reference_lines(paths):
    lines = []
    for path in paths:
        text = path.read_text()  # universal newlines, as datasets' text loader opens files
        pieces = text.split("\n")
        lines.extend(pieces[:-1] if text.endswith("\n") else pieces)
    return lines


def reference_line_by_line(tokenizer, lines, block):
    keys = None
    rows = []
    for line in lines:
        if not line.strip():
            continue
        enc = {k: list(v) for k, v in tokenizer(line, return_special_tokens_mask=True).items()}
        if len(enc["input_ids"]) > block:  # '<s> words </s>': keep the first words and </s>
            enc = {k: v[: block - 1] + v[-1:] for k, v in enc.items()}
        rows.append(enc)
        keys = list(enc)
    return keys, rows


def reference_grouped(tokenizer, lines, block):
    rows = []
    keys = None
    for start in range(0, len(lines), MAP_BATCH):
        encodings = [
            tokenizer(line, return_special_tokens_mask=True)
            for line in lines[start : start + MAP_BATCH]
        ]
        keys = list(encodings[0].keys())
        joined = {k: [x for enc in encodings for x in enc[k]] for k in keys}
        total = len(joined["input_ids"])
        usable = total if total < block else total - total % block
        for s in range(0, usable, block):
            rows.append({k: joined[k][s : s + block] for k in keys})
    return keys, rows


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    a, b = root / "a.txt", root / "b.txt"
    write_lines(a, 1500, seed=1)
    write_lines(b, 700, seed=2, newline="\r\n")
    return [a, b]


TOKENIZERS = {"bert": tiny_bert_tokenizer, "roberta": tiny_roberta_tokenizer}


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@pytest.mark.parametrize("line_by_line", [True, False], ids=["line_by_line", "grouped"])
def test_tokenize_text_files_matches_run_mlm(tmp_path, text_files, name, line_by_line):
    tokenizer = TOKENIZERS[name]()
    block = 16
    got = tokenize_text_files(
        tokenizer, text_files, block, line_by_line, cache_dir=str(tmp_path / "cache")
    )
    lines = reference_lines(text_files)
    make = reference_line_by_line if line_by_line else reference_grouped
    keys, want = make(tokenizer, lines, block)
    assert sorted(got.column_names) == sorted(keys)
    assert "special_tokens_mask" in keys
    assert ("token_type_ids" in keys) == (name == "bert")
    assert len(got) == len(want)
    assert got.to_list() == want
    lengths = {len(row["input_ids"]) for row in want}
    if line_by_line:
        assert max(lengths) == block and min(lengths) < block  # truncated, unpadded
    else:
        assert lengths == {block}


def test_max_seq_length_defaults_and_caps(tmp_path):
    tokenizer = tiny_bert_tokenizer()
    path = tmp_path / "t.txt"
    path.write_text(" ".join(["the city"] * 700) + "\n")  # 1402 words, one line
    cache = str(tmp_path / "cache")
    tokenizer.model_max_length = 10**30  # unset in the tokenizer: run_mlm.py takes 1024
    assert [
        len(r) for r in tokenize_text_files(tokenizer, [path], cache_dir=cache)["input_ids"]
    ] == [1024]
    tokenizer.model_max_length = 100  # a larger max_seq_length is cut to the model's
    got = tokenize_text_files(tokenizer, [path], 500, line_by_line=True, cache_dir=cache)
    assert [len(r) for r in got["input_ids"]] == [100]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        tokenize_text_files(tiny_bert_tokenizer(), [tmp_path / "nope.txt"])
