"""docs/options.md is generated from the code's help and must be current."""

import pytest

pytest.importorskip("fairseq", reason="the fairseq side: pip install 'se-fairseq[fairseq]'")

import importlib.util
import os

from fairseq import options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS_MD = os.path.join(ROOT, "docs", "options.md")
_spec = importlib.util.spec_from_file_location(
    "generate_options", os.path.join(ROOT, "docs", "generate_options.py")
)
assert _spec is not None and _spec.loader is not None
options_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(options_reference)


def test_options_md_is_current():
    current = open(OPTIONS_MD, encoding="utf-8").read()
    assert current == options_reference.render(), (
        f"docs/options.md is stale: regenerate it with `{options_reference.COMMAND}`"
    )


def test_check_mode_fails_on_a_hand_edited_copy(tmp_path, capsys):
    copy = tmp_path / "options.md"
    copy.write_text(open(OPTIONS_MD, encoding="utf-8").read(), encoding="utf-8")
    assert options_reference.main(["--check", "--out", str(copy)]) == 0
    copy.write_text(copy.read_text(encoding="utf-8").replace("`0.1`", "`0.2`", 1), encoding="utf-8")
    assert options_reference.main(["--check", "--out", str(copy)]) == 1
    assert "stale" in capsys.readouterr().err
    assert options_reference.main(["--out", str(copy)]) == 0
    assert options_reference.main(["--check", "--out", str(copy)]) == 0


def test_every_option_fairseq_train_adds_for_se_mlm_and_token_ls_is_listed():
    """Against fairseq-train's own parser: the options that se_mlm and token_ls add to
    masked_lm's are each in the file, with their default."""
    text = open(OPTIONS_MD, encoding="utf-8").read()

    def option_defaults(task, criterion):
        parser = options.get_training_parser()
        argv = ["data", "--task", task, "--criterion", criterion, "--arch", "roberta_base"]
        args = options.parse_args_and_arch(parser, argv)
        flags = {s for a in parser._actions for s in a.option_strings}
        return flags, vars(args)

    ours, values = option_defaults("se_mlm", "token_ls")
    theirs, _ = option_defaults("masked_lm", "masked_lm")
    added = sorted(ours - theirs)
    assert "--se-select" in added and "--tls-alpha" in added
    for flag in added:
        assert f"| `{flag}`" in text, f"{flag} is not in docs/options.md"
        default = values[flag[2:].replace("-", "_")]
        row = next(line for line in text.splitlines() if line.startswith(f"| `{flag}`"))
        shown = row.split(" | ")[1]
        assert shown == ("none" if default is None else f"`{default}`"), (flag, row)
