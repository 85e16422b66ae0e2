"""se-convert: fairseq RoBERTa <-> Hugging Face RobertaForMaskedLM, on tiny random models."""

import json
import os
import subprocess
import sys

import pytest
import torch
from support.fairseq_data import TINY_ROBERTA, fairseq_train, save_checkpoint

from se_fairseq import convert
from se_fairseq.cli.convert import hide_broken_torchaudio, main
from se_fairseq.convert import roberta  # noqa: F401  (convert.roberta)

# se-convert has a fairseq checkpoint on one side: every test here needs fairseq
pytestmark = pytest.mark.fairseq

hide_broken_torchaudio()  # a torchaudio built for another torch breaks `import transformers`
# examples/setup.sh installs the [hf] extras: in the project's environment a missing
# transformers is a failure, not a skip
import transformers  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

WORDS = [f"w{i}" for i in range(40)]
VOCAB = len(WORDS) + 5  # <s> <pad> </s> <unk> + words + <mask>
TOKENS = torch.tensor(
    [
        [0, 5, 17, 9, 33, 4, 41, 12, 8, 2],
        [0, 22, 7, 30, 2, 1, 1, 1, 1, 1],  # right-padded, as fairseq batches
    ]
)


def perturb(module, seed=0):
    """Random values everywhere (LayerNorms and biases start at 1 / 0), to catch any mix-up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return module


def write_dict(directory):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "dict.txt")
    with open(path, "w") as f:
        f.writelines(f"{w} {100 - i}\n" for i, w in enumerate(WORDS))
    return path


def fairseq_roberta(directory, *extra):
    """A tiny fairseq RoBERTa built by fairseq's task/model API, saved as fairseq 0.12 saves it."""
    from fairseq import options, tasks

    write_dict(directory)
    argv = [directory, "--task", "masked_lm", "--criterion", "masked_lm", *TINY_ROBERTA, *extra]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    task = tasks.setup_task(args)
    model = perturb(task.build_model(args)).eval()
    path = save_checkpoint(os.path.join(directory, "model.pt"), args, model, num_updates=10)
    return model, args, path


def hf_roberta(directory, seed=1, zero_token_types=True, tokenizer_vocab=None, **config):
    """A tiny HF RobertaForMaskedLM with the fairseq TINY_ROBERTA shape, saved with
    save_pretrained."""
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=66,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
    )
    settings.update(config)
    torch.manual_seed(seed)
    model = perturb(transformers.RobertaForMaskedLM(transformers.RobertaConfig(**settings)), seed)
    if zero_token_types:  # as in the released roberta-base
        with torch.no_grad():
            model.roberta.embeddings.token_type_embeddings.weight.zero_()
    model.save_pretrained(directory)
    if tokenizer_vocab is not None:
        with open(os.path.join(directory, "vocab.json"), "w") as f:
            json.dump(tokenizer_vocab, f)
    return model.eval()


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens, attention_mask=tokens.ne(1).long()).logits


def fairseq_logits(model, tokens):
    with torch.no_grad():
        return model(tokens)[0]


def assert_same_logits(a, b, tokens, atol=1e-4):
    keep = tokens.ne(1)  # outputs at <pad> are unused (fairseq zeroes them, HF does not)
    assert a.shape == b.shape
    torch.testing.assert_close(a[keep], b[keep], rtol=0, atol=atol)


def assert_same_state(a, b):
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def run(*argv):
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def fs(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("fairseq"))
    model, args, path = fairseq_roberta(directory)
    return model, args, path


@pytest.fixture(scope="module")
def fs_in_hf(fs, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("hf") / "model")
    assert run("to-hf", fs[2], out) == 0
    return out


# -- fairseq -> HF ----------------------------------------------------------------------


def test_to_hf_gives_fairseq_logits(fs, fs_in_hf):
    model, _, ckpt = fs
    assert sorted(os.listdir(fs_in_hf)) == ["config.json", "fairseq_dict.txt", "model.safetensors"]
    hf = transformers.RobertaForMaskedLM.from_pretrained(fs_in_hf).eval()
    c = hf.config
    assert (
        c.vocab_size,
        c.hidden_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.intermediate_size,
        c.max_position_embeddings,
        c.pad_token_id,
        c.type_vocab_size,
    ) == (VOCAB, 32, 2, 2, 64, 66, 1, 1)
    assert not hf.roberta.embeddings.token_type_embeddings.weight.any()
    assert hf.lm_head.decoder.weight is hf.roberta.embeddings.word_embeddings.weight
    assert_same_logits(fairseq_logits(model, TOKENS), hf_logits(hf, TOKENS), TOKENS)
    with (
        open(os.path.join(os.path.dirname(ckpt), "dict.txt")) as a,
        open(os.path.join(fs_in_hf, "fairseq_dict.txt")) as b,
    ):
        assert a.read() == b.read()


def old_layout(state_dict, args, path):
    """The released roberta.base layout: `args`, `decoder.*`, emb_layer_norm, fused in_proj."""
    old = {}
    for key, value in state_dict.items():
        key = "decoder." + key[len("encoder.") :]
        key = key.replace(".layernorm_embedding.", ".emb_layer_norm.")
        if ".self_attn.q_proj." in key:
            kind = key.rsplit(".", 1)[1]
            parts = [
                state_dict[key.replace("decoder.", "encoder.", 1).replace("q_proj", p)]
                for p in ("q_proj", "k_proj", "v_proj")
            ]
            old[key.replace("q_proj." + kind, "in_proj_" + kind)] = torch.cat(parts)
        elif ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
            continue
        else:
            old[key] = value
    torch.save(
        {
            "args": args,
            "model": old,
            "extra_state": {"epoch": 1},
            "optimizer_history": [
                {
                    "criterion_name": "MaskedLmLoss",
                    "optimizer_name": "FairseqAdam",
                    "lr_scheduler_state": {"best": None},
                    "num_updates": 10,
                }
            ],
        },
        path,
    )
    return path


def test_to_hf_reads_the_released_old_layout(fs, fs_in_hf, tmp_path):
    model, args, ckpt = fs
    path = old_layout(model.state_dict(), args, str(tmp_path / "old.pt"))
    assert "argparse.Namespace" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    out = tmp_path / "hf"
    assert run("to-hf", path, out, "--dict", os.path.join(os.path.dirname(ckpt), "dict.txt")) == 0
    assert_same_state(
        load_file(os.path.join(fs_in_hf, "model.safetensors")), load_file(out / "model.safetensors")
    )


def test_fairseq_hf_fairseq_is_exact(fs, fs_in_hf, tmp_path):
    model, _, ckpt = fs
    out = tmp_path / "back" / "model.pt"
    assert run("from-hf", fs_in_hf, out) == 0
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(out)) == []
    state = torch.load(out, weights_only=True)  # plain containers: no allow-list needed
    assert_same_state(model.state_dict(), state["model"])
    with (
        open(os.path.join(os.path.dirname(ckpt), "dict.txt")) as a,
        open(out.parent / "dict.txt") as b,
    ):
        assert a.read() == b.read()


@pytest.mark.slow
@pytest.mark.subprocess
def test_cli_module_entry_point(fs, tmp_path):
    """python -m se_fairseq.cli.convert, with --check comparing both models' logits."""
    out = tmp_path / "hf"
    result = subprocess.run(
        [sys.executable, "-m", "se_fairseq.cli.convert", "to-hf", fs[2], str(out), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "logits agree" in result.stdout
    assert (out / "model.safetensors").exists()


# -- the library API -------------------------------------------------------------------


@pytest.mark.subprocess
def test_importing_convert_imports_nothing_heavy():
    """se-convert --help stays instant: every module of se_fairseq.convert and the command
    import torch, fairseq and transformers only when a conversion runs."""
    code = (
        "import importlib, pkgutil, sys; import se_fairseq.convert as c, se_fairseq.cli.convert; "
        "[importlib.import_module(f'se_fairseq.convert.{m.name}') "
        "for m in pkgutil.iter_modules(c.__path__)]; "
        "print(sorted(m for m in ('torch', 'fairseq', 'transformers', 'safetensors', 'numpy') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def test_library_converts_both_ways_with_check(fs, tmp_path):
    """fairseq_to_hf / hf_to_fairseq: paths in, checked files and a result out, no printing."""
    _, _, ckpt = fs
    verbosity = transformers.logging.get_verbosity()
    to = convert.fairseq_to_hf(ckpt, tmp_path / "hf", check=True)
    assert to.files == [str(tmp_path / "hf" / f) for f in convert.roberta.HF_OUTPUTS]
    assert to.dict_path == str(tmp_path / "hf" / "fairseq_dict.txt")
    assert to.dict_source == os.path.join(os.path.dirname(os.path.abspath(ckpt)), "dict.txt")
    assert to.model == dict(
        layers=2, hidden=32, ffn=64, heads=2, vocab_size=VOCAB, max_positions=64
    )
    assert to.family == "roberta" and to.fairseq_args == ["--arch", "roberta_base"]
    assert 0 <= to.max_logit_difference < convert.CHECK_TOLERANCE
    back = convert.hf_to_fairseq(tmp_path / "hf", tmp_path / "fs" / "model.pt", check=True)
    assert back.files == [str(tmp_path / "fs" / "model.pt"), str(tmp_path / "fs" / "dict.txt")]
    assert back.dict_source == "fairseq_dict.txt" and back.model == to.model
    assert 0 <= back.max_logit_difference < convert.CHECK_TOLERANCE
    assert (
        convert.hf_to_fairseq(
            tmp_path / "hf", tmp_path / "fs" / "model.pt", overwrite=True
        ).max_logit_difference
        is None
    )
    assert transformers.logging.get_verbosity() == verbosity  # quiet while loading only


def test_library_raises_conversion_errors(fs, fs_in_hf, tmp_path):
    with pytest.raises(convert.ConversionError, match="no such checkpoint"):
        convert.fairseq_to_hf(tmp_path / "none.pt", tmp_path / "hf")
    with pytest.raises(convert.ConversionError, match="no such dictionary"):
        convert.fairseq_to_hf(fs[2], tmp_path / "hf", dict_path=tmp_path / "none.txt")
    with pytest.raises(
        convert.OutputExistsError, match=r"already holds .*\(overwrite=True replaces it\)"
    ):
        convert.fairseq_to_hf(fs[2], fs_in_hf)
    with pytest.raises(convert.ConversionError, match="no config.json"):
        convert.hf_to_fairseq(tmp_path, tmp_path / "model.pt")


def test_existing_outputs_name_the_keyword_in_the_library_and_the_flag_in_the_cli(
    fs, fs_in_hf, capsys
):
    with pytest.raises(convert.OutputExistsError, match=r"exists \(overwrite=True replaces it\)"):
        convert.hf_to_fairseq(fs_in_hf, fs[2])
    assert run("to-hf", fs[2], fs_in_hf) == 1
    err = capsys.readouterr().err
    assert (
        "already holds config.json" in err
        and "(--force overwrites)" in err
        and "overwrite=True" not in err
    )
    assert run("to-hf", fs[2], fs_in_hf, "--force") == 0


def test_failed_check_names_the_written_files(fs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(convert.check, "CHECK_TOLERANCE", -1.0)
    with pytest.raises(convert.CheckFailedError, match="logits differ") as failed:
        convert.fairseq_to_hf(fs[2], tmp_path / "lib", check=True)
    assert failed.value.result.max_logit_difference >= 0
    assert all(os.path.exists(f) for f in failed.value.result.files)
    assert run("to-hf", fs[2], tmp_path / "cli", "--check") == 1
    out, err = capsys.readouterr()
    assert f"wrote {tmp_path / 'cli'}" in out and "logits agree" not in out
    assert "se-convert: error: --check: fairseq and HF logits differ" in err


def test_conversion_module_leaves_torchaudio_alone():
    assert not hasattr(convert, "hide_broken_torchaudio") and not hasattr(convert, "write_dict")
    assert convert.logger.name == "se_fairseq.convert"


# -- HF -> fairseq ----------------------------------------------------------------------


def test_from_hf_gives_hf_logits_in_fairseq(tmp_path):
    """Through fairseq's own loader; non-zero token-type embeddings fold into the positions."""
    from fairseq import checkpoint_utils

    hf = hf_roberta(tmp_path / "hf", zero_token_types=False)
    out = tmp_path / "fs" / "model.pt"
    assert run("from-hf", tmp_path / "hf", out) == 0
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(out)])
    assert len(task.source_dictionary) == VOCAB and cfg.model.encoder_layers == 2
    assert_same_logits(fairseq_logits(models[0].eval(), TOKENS), hf_logits(hf, TOKENS), TOKENS)


def test_hf_fairseq_hf_is_exact(tmp_path):
    hf_roberta(
        tmp_path / "hf",
        tokenizer_vocab={
            **{s: i for i, s in enumerate(["<s>", "<pad>", "</s>", "<unk>"])},
            **{f"tok{i}": i + 4 for i in range(VOCAB - 5)},
            "<mask>": VOCAB - 1,
        },
    )
    assert run("from-hf", tmp_path / "hf", tmp_path / "fs" / "model.pt") == 0
    with open(tmp_path / "fs" / "dict.txt") as f:
        assert f.read().split()[::2] == [f"tok{i}" for i in range(VOCAB - 5)]
    assert run("to-hf", tmp_path / "fs" / "model.pt", tmp_path / "hf2") == 0
    assert_same_state(
        load_file(tmp_path / "hf" / "model.safetensors"),
        load_file(tmp_path / "hf2" / "model.safetensors"),
    )
    a, b = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("hf", "hf2"))
    for key in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
        "pad_token_id",
        "hidden_act",
        "tie_word_embeddings",
        "model_type",
    ):
        assert a.get(key) == b.get(key), key


def test_from_hf_without_vocab_writes_placeholders(tmp_path, caplog):
    from fairseq.data import Dictionary

    hf_roberta(tmp_path / "hf")
    assert run("from-hf", tmp_path / "hf", tmp_path / "fs" / "model.pt") == 0
    d = Dictionary.load(str(tmp_path / "fs" / "dict.txt"))
    assert len(d) + 1 == VOCAB and d[4] == "madeupword0000" and d.pad() == 1
    assert "placeholder" in caplog.text


def test_dict_from_vocab_skips_unusable_tokens():
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a": 4, "b c": 5, "<s2>": 7, "<mask>": 9}
    words, placeholders = convert.roberta.dict_words_from_vocab(vocab, 10)
    assert words == ["a", "madeupword0000", "madeupword0001", "<s2>", "madeupword0002"]
    assert placeholders == 3


@pytest.mark.subprocess
@pytest.mark.slow
def test_from_hf_checkpoint_restores_in_fairseq_train(corpus, tmp_path):
    """fairseq-train --task se_mlm --restore-file continues a converted HF model."""
    import shutil

    from fairseq.data import Dictionary

    vocab = len(Dictionary.load(os.path.join(corpus, "dict.txt"))) + 1
    hf_roberta(tmp_path / "hf", vocab_size=vocab)
    shutil.copyfile(os.path.join(corpus, "dict.txt"), tmp_path / "hf" / "fairseq_dict.txt")
    out = tmp_path / "fs" / "model.pt"
    assert run("from-hf", tmp_path / "hf", out) == 0
    # the corpus is binarized with the very dict.txt written beside the checkpoint
    assert (tmp_path / "fs" / "dict.txt").read_text() == open(
        os.path.join(corpus, "dict.txt")
    ).read()
    result = fairseq_train(
        corpus,
        str(tmp_path / "ckpt"),
        "--task",
        "se_mlm",
        "--se-select",
        "random",
        "--criterion",
        "masked_lm",
        "--restore-file",
        str(out),
        "--reset-optimizer",
        "--reset-dataloader",
        "--reset-meters",
        max_update=1,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"Loaded checkpoint {out}" in result.stdout


# -- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--encoder-normalize-before"], "pre-LN"),
        (["--untie-weights-roberta"], "untied"),
        (["--activation-fn", "relu"], "activation 'relu'"),
    ],
)
def test_to_hf_refuses_what_hf_cannot_compute(extra, message, tmp_path, capsys):
    _, _, ckpt = fairseq_roberta(str(tmp_path / "fs"), *extra)
    assert run("to-hf", ckpt, tmp_path / "hf") == 1
    err = capsys.readouterr().err
    assert "cannot convert" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "hf" / "model.safetensors").exists()


def test_to_hf_refuses_untied_weights_even_without_the_flag(fs, tmp_path, capsys):
    model, args, _ = fs
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["encoder.lm_head.weight"] += 1.0
    torch.save(
        {
            "args": args,
            "model": state,
            "extra_state": {"epoch": 1},
            "optimizer_history": [
                {
                    "criterion_name": "x",
                    "optimizer_name": "x",
                    "lr_scheduler_state": {},
                    "num_updates": 0,
                }
            ],
        },
        tmp_path / "untied.pt",
    )
    assert (
        run(
            "to-hf",
            tmp_path / "untied.pt",
            tmp_path / "hf",
            "--dict",
            os.path.join(os.path.dirname(fs[2]), "dict.txt"),
        )
        == 1
    )
    assert "untied LM head" in capsys.readouterr().err


def test_to_hf_refuses_a_dictionary_of_another_size(fs, tmp_path, capsys):
    with open(tmp_path / "dict.txt", "w") as f:
        f.write("a 1\nb 1\n")
    assert run("to-hf", fs[2], tmp_path / "hf", "--dict", tmp_path / "dict.txt") == 1
    assert "embedding has 45 rows" in capsys.readouterr().err


def test_from_hf_refuses_untied_weights(tmp_path, capsys):
    hf = hf_roberta(tmp_path / "hf", tie_word_embeddings=False)
    assert not torch.equal(hf.lm_head.decoder.weight, hf.roberta.embeddings.word_embeddings.weight)
    assert run("from-hf", tmp_path / "hf", tmp_path / "fs" / "model.pt") == 1
    err = capsys.readouterr().err
    assert "untied LM head" in err and "Traceback" not in err
    assert not (tmp_path / "fs" / "model.pt").exists()


@pytest.mark.parametrize(
    "change,message",
    [
        ({"hidden_act": "relu"}, "hidden_act 'relu'"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key'"),
        ({"pad_token_id": 0}, "pad_token_id 0"),
        ({"layer_norm_eps": 1e-12}, "layer_norm_eps"),
        ({"is_decoder": True}, "decoder"),
        ({"model_type": "gpt2"}, "model_type 'gpt2'"),
    ],
)
def test_from_hf_refuses_other_architectures(change, message, tmp_path, capsys):
    hf_roberta(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config.update(change)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    assert run("from-hf", tmp_path / "hf", tmp_path / "fs" / "model.pt") == 1
    err = capsys.readouterr().err
    assert "cannot convert" in err and message in err


def test_from_hf_refuses_distinct_token_types(tmp_path, capsys):
    hf_roberta(tmp_path / "hf", type_vocab_size=2, zero_token_types=False)
    assert run("from-hf", tmp_path / "hf", tmp_path / "fs" / "model.pt") == 1
    assert "token-type embeddings" in capsys.readouterr().err


def test_missing_transformers_is_a_clear_message(fs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)
    for argv in (["to-hf", fs[2], tmp_path / "hf"], ["from-hf", tmp_path, tmp_path / "x.pt"]):
        assert run(*argv) != 0
        err = capsys.readouterr().err
        assert "pip install 'se-fairseq[hf]'" in err and "Traceback" not in err
    assert not (tmp_path / "hf").exists()
