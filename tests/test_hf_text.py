"""se_fairseq.hf.tokenize_text_files against run_mlm.py's tokenization written out plainly:
lines read with Python, tokenized one at a time, grouped per map batch of 1,000 lines."""

import logging

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


def test_max_seq_length_above_the_tokenizer_limit_warns_as_run_mlm(tmp_path, caplog):
    tokenizer = tiny_bert_tokenizer()
    tokenizer.model_max_length = 100
    path = tmp_path / "t.txt"
    path.write_text("the city\n")
    cache = str(tmp_path / "cache")
    with caplog.at_level(logging.WARNING):
        tokenize_text_files(tokenizer, [path], 100, cache_dir=cache)  # at the limit: silent
    assert "max_seq_length" not in caplog.text
    with caplog.at_level(logging.WARNING):
        tokenize_text_files(tokenizer, [path], 500, line_by_line=True, cache_dir=cache)
    # run_mlm.py's words
    assert (
        "The max_seq_length passed (500) is larger than the maximum length for the model (100). "
        "Using max_seq_length=100." in caplog.text
    )


def test_line_by_line_with_a_first_map_batch_of_blank_lines(tmp_path):
    """1,000 blank lines make a map batch without one example: the next batches still
    give theirs (transformers' tokenizer fails on an empty list of lines)."""
    tokenizer = tiny_bert_tokenizer()
    path = tmp_path / "t.txt"
    lines = [""] * MAP_BATCH + ["the city", "  ", "of the school"]
    path.write_text("\n".join(lines) + "\n")
    got = tokenize_text_files(tokenizer, [path], 16, True, cache_dir=str(tmp_path / "cache"))
    keys, want = reference_line_by_line(tokenizer, lines, 16)
    assert sorted(got.column_names) == sorted(keys)
    assert got.to_list() == want and len(want) == 2


@pytest.mark.parametrize("line_by_line", [True, False], ids=["line_by_line", "grouped"])
def test_files_without_examples_are_named_in_one_line(tmp_path, line_by_line):
    tokenizer = tiny_bert_tokenizer()
    cache = str(tmp_path / "cache")
    empty, other = tmp_path / "empty.txt", tmp_path / "other.txt"
    empty.write_text("")
    other.write_text("")
    with pytest.raises(ValueError, match=r"^\S*empty\.txt, \S*other\.txt: empty files"):
        tokenize_text_files(tokenizer, [empty, other], 16, line_by_line, cache_dir=cache)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n\t\n")
    if line_by_line:
        with pytest.raises(ValueError, match=r"^\S*blank\.txt: no line that is not blank"):
            tokenize_text_files(tokenizer, [blank], 16, line_by_line, cache_dir=cache)
    else:  # every line gives its special tokens, as in run_mlm.py
        assert len(tokenize_text_files(tokenizer, [blank], 16, cache_dir=cache)) == 1


def test_a_file_that_is_not_utf8_is_named_with_the_first_bad_byte(tmp_path):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("the city\n" * 3)
    bad.write_bytes(b"the city\n" * 3 + "caf\xe9\n".encode("latin-1"))
    where = r"^\S*bad\.txt: not UTF-8 text \(byte 0xe9 at offset 30\)"
    with pytest.raises(ValueError, match=where):
        tokenize_text_files(tiny_bert_tokenizer(), [good, bad], cache_dir=str(tmp_path / "c"))
