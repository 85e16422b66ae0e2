"""The README's Python API blocks run as written."""

import os
import re
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def api_blocks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_readme_python_api_blocks_run(corpus, vanilla_checkpoint, tmp_path, monkeypatch):
    blocks = api_blocks()
    assert len(blocks) == 3
    shutil.copytree(corpus, tmp_path / "data-bin")
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(vanilla_checkpoint, tmp_path / "checkpoints" / "checkpoint_last.pt")
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "data-bin" / "train.se_scores.npy").exists()
    hf = tmp_path / "checkpoints" / "hf"
    assert (hf / "model.safetensors").exists()
    # the documented layout gives the HF folder the data's dictionary, byte for byte
    assert (hf / "fairseq_dict.txt").read_bytes() == (
        tmp_path / "data-bin" / "dict.txt"
    ).read_bytes()
