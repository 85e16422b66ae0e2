"""BERT: fairseq's --arch hf_bert against Hugging Face BertForMaskedLM, se-convert both ways,
the data path (se-convert tokenize + fairseq-preprocess) and SE training, on tiny random
models made here (no download)."""

import json
import os
import types

import numpy as np
import pytest
import torch
from support.fairseq_data import TINY_ROBERTA, fairseq_train, setup_task, split_tokens

from se_fairseq.cli.convert import hide_broken_torchaudio, main

# se-convert has a fairseq checkpoint on one side: every test here needs fairseq
pytestmark = pytest.mark.fairseq

hide_broken_torchaudio()
import transformers  # noqa: E402  (installed by examples/setup.sh: missing is a failure)
from safetensors.torch import load_file  # noqa: E402

from se_fairseq import convert  # noqa: E402
from se_fairseq.convert import bert as bert_convert  # noqa: E402
from se_fairseq.convert.state_dicts import fairseq_to_hf_state, hf_to_fairseq_state  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

# A WordPiece vocabulary laid out as BERT's: [PAD] first, unused rows, then [UNK] [CLS]
# [SEP] [MASK], words, continuation pieces and cased words; two more embedding rows
# than tokens (padded vocabularies exist).
VOCAB = (
    ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + "the a cat dog sat ran on mat big small hello world run walk house tree".split()
    + ["##s", "##ing", "##ed", "##er", "Hello", "The"]
)
ROWS = len(VOCAB) + 2
PAD, UNK, CLS, SEP, MASK = (VOCAB.index(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"))
# the same shape as TINY_ROBERTA, so fairseq_train's model flags fit with --arch hf_bert
TINY = dict(
    vocab_size=ROWS,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    type_vocab_size=2,
)
TINY_BERT = ["--arch", "hf_bert", *TINY_ROBERTA[2:]]  # TINY_ROBERTA's sizes, 64 positions
TEXT_WORDS = (
    "the a cat cats dog dogs sat ran on mat big small hello Hello world running walked The house "
    "trees"
).split()


def documented_order():
    """bert.py's documented rule, restated: [CLS] [PAD] [SEP] [UNK], the other rows ascending,
    [MASK]."""
    specials = [CLS, PAD, SEP, UNK]
    return specials + [i for i in range(ROWS) if i not in {PAD, UNK, CLS, SEP, MASK}] + [MASK]


def perturb(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return module


def tokenizer(lower=True):
    return transformers.BertTokenizerFast(
        vocab={t: i for i, t in enumerate(VOCAB)}, do_lower_case=lower
    )


def hf_bert(directory, seed=0, lower=True, model_class=None, tok=None, **config):
    """A tiny random BertForMaskedLM and its tokenizer, saved as transformers saves them."""
    torch.manual_seed(seed)
    model_class = model_class or transformers.BertForMaskedLM
    model = perturb(model_class(transformers.BertConfig(**{**TINY, **config})), seed).eval()
    model.save_pretrained(directory)
    (tok or tokenizer(lower)).save_pretrained(directory)
    return model


def run(*argv):
    return main([str(a) for a in argv])


def write_text(directory, lines=(("train", 160), ("valid", 16)), seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    for split, n in lines:
        with open(os.path.join(directory, f"{split}.txt"), "w") as f:
            for _ in range(n):
                f.write(" ".join(rng.choice(TEXT_WORDS, size=rng.integers(3, 25))) + "\n")
    return directory


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bert") / "hf"
    hf_bert(directory)
    return directory


@pytest.fixture(scope="module")
def fs_dir(hf_dir):
    out = hf_dir.parent / "fs"
    assert run("from-hf", hf_dir, out / "model.pt", "--check") == 0
    return out


def preprocess(*argv):
    """fairseq-preprocess in this process (its own parser and main; saves a start-up)."""
    from fairseq import options
    from fairseq_cli import preprocess as fairseq_preprocess

    fairseq_preprocess.main(options.get_preprocessing_parser().parse_args([str(a) for a in argv]))


@pytest.fixture(scope="module")
def bert_data(fs_dir):
    """Raw text -> se-convert tokenize -> fairseq-preprocess --srcdict dict.txt (the documented
    path)."""
    root = fs_dir.parent
    write_text(root / "raw")
    assert (
        run(
            "tokenize",
            fs_dir,
            root / "raw" / "train.txt",
            root / "raw" / "valid.txt",
            "--out-dir",
            root / "tok",
        )
        == 0
    )
    preprocess(
        "--only-source",
        "--srcdict",
        fs_dir / "dict.txt",
        "--trainpref",
        root / "tok" / "train.txt",
        "--validpref",
        root / "tok" / "valid.txt",
        "--destdir",
        root / "data-bin",
        "--workers",
        "1",
    )
    return str(root / "data-bin")


def hf_logits(model, ids, attention_mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=attention_mask).logits


def load_fairseq(path):
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)])
    return models[0].eval(), cfg, task


# -- the architecture --------------------------------------------------------------------


def test_arch_names_and_presets():
    import argparse

    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY
    from fairseq.models.masked_lm import MaskedLMModel

    from se_fairseq.models.bert import BertModel

    # fairseq's own bert_base / bert_large (its masked_lm model) stay what they were
    assert ARCH_MODEL_REGISTRY["bert_base"] is MaskedLMModel
    assert ARCH_MODEL_REGISTRY["bert_large"] is MaskedLMModel
    for arch, shape in (
        ("hf_bert_base", (12, 768, 3072, 12)),
        ("hf_bert", (12, 768, 3072, 12)),
        ("hf_bert_large", (24, 1024, 4096, 16)),
    ):
        assert ARCH_MODEL_REGISTRY[arch] is BertModel
        m = argparse.Namespace()
        ARCH_CONFIG_REGISTRY[arch](m)
        assert (
            m.encoder_layers,
            m.encoder_embed_dim,
            m.encoder_ffn_embed_dim,
            m.encoder_attention_heads,
        ) == shape, arch
        assert (
            m.max_positions,
            m.type_vocab_size,
            m.activation_fn,
            m.encoder_normalize_before,
        ) == (512, 2, "gelu", False)


def test_classification_heads_register_as_on_roberta(bert_data):
    """sentence_prediction's call: a head on the <s> ([CLS]) features, BERT's pooler shape."""
    task, cfg = setup_task(bert_data, "--task", "masked_lm", "--criterion", "masked_lm", *TINY_BERT)
    model = task.build_model(cfg.model)
    model.register_classification_head("sentence_classification_head", num_classes=3)
    model.eval()
    tokens = torch.tensor([[0, 5, 9, 2], [0, 7, 2, 1]])
    with torch.no_grad():
        logits, _ = model(
            tokens, features_only=True, classification_head_name="sentence_classification_head"
        )
        features, _ = model(tokens, features_only=True)
        head = model.classification_heads["sentence_classification_head"]
        expected = head.out_proj(torch.tanh(head.dense(features[:, 0])))
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits, expected)


def test_pre_ln_is_refused_at_build(bert_data):
    task, cfg = setup_task(
        bert_data,
        "--task",
        "masked_lm",
        "--criterion",
        "masked_lm",
        *TINY_BERT,
        "--encoder-normalize-before",
    )
    with pytest.raises(ValueError, match="post-LN"):
        task.build_model(cfg.model)


def test_fairseq_bert_gives_hf_logits(hf_dir, fs_dir):
    """Loaded by fairseq's own loader, on text encoded by the HF tokenizer (padded batch):
    the logits of BertForMaskedLM, in fairseq's order, at every non-pad position."""
    hf = transformers.BertForMaskedLM.from_pretrained(hf_dir).eval()
    tok = transformers.BertTokenizerFast.from_pretrained(hf_dir)
    enc = tok(
        ["the cats sat on the mat", "Hello world, running dogs walked into a big house"],
        padding=True,
        return_tensors="pt",
    )
    order = torch.tensor(documented_order())
    fairseq_id = torch.argsort(order)  # HF id -> fairseq id
    tokens = fairseq_id[enc["input_ids"]]
    model, cfg, task = load_fairseq(fs_dir / "model.pt")
    assert cfg.model._name == "hf_bert" and len(task.source_dictionary) == ROWS
    assert torch.equal(model.encoder.hf_token_ids, order)
    assert task.source_dictionary.pad() == 1 and int(tokens[1, -1]) in (1, 2)
    keep = tokens.ne(1)
    assert not keep.all()  # the batch is padded
    with torch.no_grad():
        fs = model(tokens)[0]
        fs_masked = model(tokens, masked_tokens=keep)[0]  # the criterion's call
    expected = hf_logits(hf, enc["input_ids"], enc["attention_mask"])[..., order]
    torch.testing.assert_close(fs[keep], expected[keep], rtol=0, atol=1e-5)
    torch.testing.assert_close(fs_masked, expected[keep], rtol=0, atol=1e-5)
    assert model.max_positions() == 64


def test_converted_dict_follows_the_documented_order(fs_dir):
    words = [line.rsplit(" ", 1)[0] for line in (fs_dir / "dict.txt").read_text().splitlines()]
    order = documented_order()
    assert words[: len(VOCAB) - 5] == [VOCAB[i] for i in order[4 : len(VOCAB) - 1]]
    assert words[len(VOCAB) - 5 :] == [
        "madeupword0000",
        "madeupword0001",
    ]  # the rows without a token
    assert (fs_dir / "tokenizer" / "vocab.txt").read_text().split("\n")[:-1] == VOCAB


# -- conversion both ways, exactly -------------------------------------------------------


def test_hf_fairseq_hf_is_bit_for_bit(hf_dir, fs_dir, tmp_path):
    assert run("to-hf", fs_dir / "model.pt", tmp_path / "hf", "--check") == 0
    a, b = load_file(hf_dir / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (hf_dir, tmp_path / "hf"))
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
        "model_type",
        "architectures",
    ):
        assert ca.get(key) == cb.get(key), key
    back = transformers.BertTokenizerFast.from_pretrained(tmp_path / "hf")
    assert back.get_vocab() == tokenizer().get_vocab() and back.do_lower_case
    assert (tmp_path / "hf" / "fairseq_dict.txt").read_text() == (fs_dir / "dict.txt").read_text()


def test_fairseq_hf_fairseq_is_bit_for_bit(fs_dir, tmp_path):
    assert run("to-hf", fs_dir / "model.pt", tmp_path / "hf") == 0
    assert run("from-hf", tmp_path / "hf", tmp_path / "fs" / "model.pt") == 0
    a = torch.load(fs_dir / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "fs" / "model.pt", weights_only=True)["model"]
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert (tmp_path / "fs" / "dict.txt").read_text() == (fs_dir / "dict.txt").read_text()


def test_model_built_in_fairseq_converts_both_ways(bert_data, tmp_path, caplog):
    """A hf_bert trained in fairseq from scratch (ids in fairseq's order): to-hf --check
    gives a BertForMaskedLM with the same logits and a vocab.txt from dict.txt; back is exact."""
    task, cfg = setup_task(bert_data, "--task", "masked_lm", "--criterion", "masked_lm", *TINY_BERT)
    model = perturb(task.build_model(cfg.model)).eval()
    assert torch.equal(model.encoder.hf_token_ids, torch.arange(ROWS))
    os.makedirs(tmp_path / "native")
    path = save_checkpoint(cfg, model, tmp_path / "native" / "checkpoint.pt")
    result = convert.fairseq_to_hf(
        path, tmp_path / "hf", dict_path=os.path.join(bert_data, "dict.txt"), check=True
    )
    assert result.family == "bert" and result.max_logit_difference <= convert.CHECK_TOLERANCE
    assert "vocab.txt rebuilt from dict.txt" in caplog.text
    vocab = (tmp_path / "hf" / "vocab.txt").read_text().split("\n")[:-1]
    d = task.source_dictionary
    assert vocab[:4] == ["[CLS]", "[PAD]", "[SEP]", "[UNK]"] and vocab[-1] == "[MASK]"
    assert vocab[4:-1] == [d[i] for i in range(4, len(d) - 1)]
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.pad_token_id == 1
    tokens = torch.tensor([[0, 5, 9, 17, 2], [0, 21, 2, 1, 1]])
    with torch.no_grad():
        fs = model(tokens)[0]
    keep = tokens.ne(1)
    torch.testing.assert_close(
        fs[keep], hf_logits(hf, tokens, keep.long())[keep], rtol=0, atol=1e-5
    )
    back = convert.hf_to_fairseq(tmp_path / "hf", tmp_path / "back" / "model.pt", check=True)
    state = torch.load(back.output, weights_only=True)["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key


def test_base_shaped_layout_converts():
    """bert-base's HF layout (names and shapes of BertForMaskedLM from BertConfig()) maps onto
    --arch hf_bert_base as fairseq builds it, and back, exactly; logits agree on a short input."""
    from fairseq.data import Dictionary

    config = (
        transformers.BertConfig()
    )  # bert-base-uncased: 30522 rows, 768, 12 layers, 512 positions
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(config).eval()
    specials = [101, 0, 102, 100, 103]  # bert-base-uncased's [CLS] [PAD] [SEP] [UNK] [MASK]
    options, fs_sd, token_ids = hf_to_fairseq_state(
        bert_convert.FAMILY,
        config,
        hf.state_dict(),
        lambda vocab: bert_convert.token_order(specials, vocab),
    )
    assert bert_convert.fairseq_args(options) == ("hf_bert_base", [])
    d = Dictionary()
    for i in range(config.vocab_size - 5):
        d.add_symbol(f"w{i}")
    task = types.SimpleNamespace(source_dictionary=d, target_dictionary=d)
    d.add_symbol("<mask>")
    from support.fairseq_data import parse_training_args

    cfg = parse_training_args("data", "--task", "masked_lm", "--arch", "hf_bert_base")
    from se_fairseq.models.bert import BertModel

    model = BertModel.build_model(cfg.model, task).eval()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: tuple(v.shape) for k, v in fs_sd.items()
    }
    model.load_state_dict(fs_sd, strict=True)
    tokens = torch.tensor([[0, 2000, 3000, 17, 29000, 2], [0, 7592, 2088, 2, 1, 1]])
    keep = tokens.ne(1)
    with torch.no_grad():
        fs = model(tokens)[0]
    hf_out = hf_logits(hf, token_ids[tokens], keep.long())[..., token_ids]
    assert (fs[keep] - hf_out[keep]).abs().max().item() <= convert.CHECK_TOLERANCE
    back = fairseq_to_hf_state(bert_convert.FAMILY, fs_sd, cfg.model)
    back, back_sd, back_ids = back.config, back.state_dict, back.token_ids
    hf_sd = {k: v for k, v in hf.state_dict().items() if k in back_sd}
    assert set(back_sd) == set(hf_sd) and all(torch.equal(back_sd[k], hf_sd[k]) for k in hf_sd)
    assert back.pad_token_id == 0 and torch.equal(back_ids, token_ids)


# -- the data path ----------------------------------------------------------------------------


def test_tokenize_and_preprocess_give_the_hf_tokenizer_ids(hf_dir, bert_data):
    """What fairseq binarizes is, line by line, the HF tokenizer's ids mapped to fairseq's
    (the documented order), then </s>; lower-cased as the tokenizer config says."""
    tok = transformers.BertTokenizerFast.from_pretrained(hf_dir)
    fairseq_id = np.argsort(documented_order())
    lines = (hf_dir.parent / "raw" / "train.txt").read_text().splitlines()
    binarized = split_tokens(os.path.join(bert_data, "train"))
    assert len(binarized) == len(lines)
    unk = 0
    for line, ids in zip(lines, binarized):
        hf_ids = tok(line, add_special_tokens=False)["input_ids"]
        assert ids.tolist() == [int(fairseq_id[i]) for i in hf_ids] + [2], line
        unk += hf_ids.count(UNK)
    assert unk > 0  # 'walked' is not in the vocabulary: [UNK] -> <unk>
    assert "hello" in (hf_dir.parent / "tok" / "train.txt").read_text()
    assert "Hello" not in (hf_dir.parent / "tok" / "train.txt").read_text()


def test_tokenize_keeps_case_for_a_cased_checkpoint(tmp_path):
    hf_bert(tmp_path / "hf", lower=False)
    assert run("from-hf", tmp_path / "hf", tmp_path / "fs" / "model.pt") == 0
    (tmp_path / "raw.txt").write_text("Hello the cats\nThe dogs\n")
    assert (
        run("tokenize", tmp_path / "fs", tmp_path / "raw.txt", "--out-dir", tmp_path / "tok") == 0
    )
    assert (tmp_path / "tok" / "raw.txt").read_text() == "Hello the cat ##s\nThe dog ##s\n"


def test_tokenize_refuses_to_overwrite_without_force(fs_dir, tmp_path, capsys):
    (tmp_path / "a.txt").write_text("the cat\n")
    assert run("tokenize", fs_dir, tmp_path / "a.txt", "--out-dir", tmp_path / "tok") == 0
    assert run("tokenize", fs_dir, tmp_path / "a.txt", "--out-dir", tmp_path / "tok") == 1
    assert "exists (--force overwrites)" in capsys.readouterr().err
    with pytest.raises(convert.OutputExistsError, match=r"overwrite=True"):
        bert_convert.tokenize_files(fs_dir, [tmp_path / "a.txt"], tmp_path / "tok")
    assert (
        run("tokenize", fs_dir, tmp_path / "a.txt", "--out-dir", tmp_path / "tok", "--force") == 0
    )


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change,message",
    [
        ({"hidden_act": "relu"}, "hidden_act 'relu'"),
        ({"hidden_act": "gelu_new"}, "hidden_act 'gelu_new'"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key'"),
        ({"layer_norm_eps": 1e-5}, "layer_norm_eps 1e-05"),
        ({"is_decoder": True}, "decoder"),
        ({"tie_word_embeddings": False}, "untied decoder"),
    ],
)
def test_from_hf_refuses_what_fairseq_cannot_compute(change, message, tmp_path, capsys):
    hf_bert(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config.update(change)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    assert run("from-hf", tmp_path / "hf", tmp_path / "fs" / "model.pt") == 1
    err = capsys.readouterr().err
    assert "cannot convert" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "fs").exists()


def test_from_hf_refuses_unknown_heads_and_tokenizers(tmp_path, capsys):
    hf_bert(tmp_path / "nohead", model_class=transformers.BertModel)
    assert run("from-hf", tmp_path / "nohead", tmp_path / "a.pt") == 1
    assert "no masked-LM head" in capsys.readouterr().err
    hf_bert(tmp_path / "notok")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        os.remove(tmp_path / "notok" / name)
    assert run("from-hf", tmp_path / "notok", tmp_path / "b.pt") == 1
    assert "no BERT tokenizer" in capsys.readouterr().err
    no_mask = transformers.BertTokenizerFast(
        vocab={t: i for i, t in enumerate(VOCAB) if t != "[MASK]"}, mask_token=None
    )
    hf_bert(tmp_path / "nomask", tok=no_mask)
    assert run("from-hf", tmp_path / "nomask", tmp_path / "c.pt") == 1
    assert "no mask token ([MASK])" in capsys.readouterr().err
    big = transformers.BertTokenizerFast(
        vocab={**{t: i for i, t in enumerate(VOCAB)}, "extra": ROWS + 3}
    )
    hf_bert(tmp_path / "big", tok=big)
    assert run("from-hf", tmp_path / "big", tmp_path / "d.pt") == 1
    assert f"ids up to {ROWS + 3} but the model has {ROWS}" in capsys.readouterr().err
    assert not any((tmp_path / f).exists() for f in ("a.pt", "b.pt", "c.pt", "d.pt"))


def test_pretraining_checkpoint_drops_pooler_and_nsp_head(tmp_path, caplog):
    """A BertForPreTraining directory (the layout of bert-base-uncased on the hub): the
    masked LM converts, the pooler and the next-sentence head are left out with a note."""
    pre = hf_bert(tmp_path / "hf", model_class=transformers.BertForPreTraining)
    result = convert.hf_to_fairseq(tmp_path / "hf", tmp_path / "fs" / "model.pt", check=True)
    assert result.max_logit_difference <= convert.CHECK_TOLERANCE
    assert "dropping 4 tensors the masked LM does not use" in caplog.text
    state = torch.load(result.output, weights_only=True)["model"]
    order = torch.tensor(documented_order())
    assert torch.equal(state["encoder.lm_head.bias"], pre.cls.predictions.bias.detach()[order])


def test_to_hf_refuses_a_tokenizer_of_another_model(fs_dir, tmp_path, capsys):
    swapped = list(VOCAB)
    swapped[8], swapped[9] = swapped[9], swapped[8]  # 'the' and 'a' trade ids
    transformers.BertTokenizerFast(vocab={t: i for i, t in enumerate(swapped)}).save_pretrained(
        tmp_path / "tok"
    )
    assert run("to-hf", fs_dir / "model.pt", tmp_path / "hf", "--tokenizer", tmp_path / "tok") == 1
    err = capsys.readouterr().err
    assert "2 dict.txt words have other ids" in err and not (tmp_path / "hf").exists()


def test_to_hf_refuses_non_gelu(bert_data, tmp_path, capsys):
    task, cfg = setup_task(
        bert_data,
        "--task",
        "masked_lm",
        "--criterion",
        "masked_lm",
        *TINY_BERT,
        "--activation-fn",
        "relu",
    )
    save_checkpoint(cfg, task.build_model(cfg.model), tmp_path / "relu.pt")
    assert (
        run(
            "to-hf",
            tmp_path / "relu.pt",
            tmp_path / "hf",
            "--dict",
            os.path.join(bert_data, "dict.txt"),
        )
        == 1
    )
    assert "activation 'relu'" in capsys.readouterr().err


# -- SE on BERT ---------------------------------------------------------------------------------


def save_checkpoint(cfg, model, path):
    from omegaconf import OmegaConf

    torch.save(
        {
            "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
            "model": model.state_dict(),
            "extra_state": {"epoch": 1},
            "optimizer_history": [
                {
                    "criterion_name": "MaskedLmLoss",
                    "optimizer_name": "x",
                    "lr_scheduler_state": {"best": None},
                    "num_updates": 1,
                }
            ],
        },
        path,
    )
    return path


def first_batch(task, split="train"):
    task.load_dataset(split)
    itr = task.get_batch_iterator(
        task.dataset(split), max_sentences=8, seed=5, epoch=1, num_workers=0
    ).next_epoch_itr(shuffle=True)
    return list(itr)


@pytest.fixture(scope="module")
def scored_bert_data(bert_data, fs_dir):
    """The BERT corpus with se-score's correctness scores (by the converted checkpoint,
    one block per sentence) and the rarity control's score file."""
    from se_fairseq import rarity
    from se_fairseq.scoring_job import score_corpus

    score_corpus(bert_data, str(fs_dir / "model.pt"), metric="correctness", sample_break_mode="eos")
    rarity.write_score_file(bert_data, "train", os.path.join(bert_data, "train.rarity"))
    return bert_data


def test_se_score_on_bert_is_the_hf_models_surprisal(scored_bert_data, hf_dir):
    """se-score's correctness of every token of the first sentences = -log p of the true
    token under BertForMaskedLM reading [CLS] sentence [SEP] unmasked."""
    hf = transformers.BertForMaskedLM.from_pretrained(hf_dir).eval()
    order = torch.tensor(documented_order())
    scores = np.load(os.path.join(scored_bert_data, "train.se_scores.npy")).astype(np.float64)
    offset = 0
    for sentence in split_tokens(os.path.join(scored_bert_data, "train"))[:10]:
        hf_ids = order[torch.tensor([0, *sentence.tolist()])][None]  # <s> sentence </s>
        lprobs = torch.log_softmax(hf_logits(hf, hf_ids, torch.ones_like(hf_ids)).double(), -1)[0]
        expected = -lprobs[torch.arange(1, hf_ids.size(1)), hf_ids[0, 1:]]
        np.testing.assert_allclose(
            scores[offset : offset + len(sentence)], expected.numpy(), atol=2e-2
        )
        offset += len(sentence)  # float16 file: ~3 significant digits


@pytest.mark.parametrize(
    "mode",
    [
        ["--se-select", "topk"],
        ["--se-select", "threshold", "--se-threshold", "2.5"],
        ["--se-online"],
        ["--se-metric", "rarity", "--se-scores", "RARITY"],
    ],
)
def test_se_training_step_on_converted_bert(scored_bert_data, fs_dir, mode):
    """One training step of every SE mode, configured by fairseq-train's argument parsing,
    on the converted checkpoint: finite TLS loss, masked tokens, gradients everywhere."""
    from fairseq import checkpoint_utils

    mode = [os.path.join(scored_bert_data, "train.rarity") if a == "RARITY" else a for a in mode]
    task, cfg = setup_task(
        scored_bert_data,
        *TINY_BERT,
        "--cpu",
        "--seed",
        "5",
        "--task",
        "se_mlm",
        "--criterion",
        "token_ls",
        "--sample-break-mode",
        "eos",
        *mode,
    )
    model = task.build_model(cfg.model)
    model.load_state_dict(
        checkpoint_utils.load_checkpoint_to_cpu(str(fs_dir / "model.pt"))["model"],
        strict=True,
        model_cfg=cfg.model,
    )
    criterion = task.build_criterion(cfg.criterion)
    sample = first_batch(task)[0]
    optimizer = types.SimpleNamespace(backward=lambda loss: loss.backward())
    loss, sample_size, log = task.train_step(sample, model, criterion, optimizer, update_num=0)
    assert torch.isfinite(loss) and int(sample_size) > 0 and float(log["ref_total"]) > 0
    grad = model.encoder.sentence_encoder.layers[0].fc1.weight.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["topk", "random"])
def test_whole_word_masks_cover_whole_words(scored_bert_data, fs_dir, mode):
    """--mask-whole-words --bpe bert --bpe-vocab-file <the converted tokenizer's vocab.txt>
    (offline): a word is its first piece and the '##' pieces after it; masks take words whole."""
    task, _ = setup_task(
        scored_bert_data,
        *TINY_BERT,
        "--cpu",
        "--seed",
        "5",
        "--task",
        "se_mlm",
        "--criterion",
        "masked_lm",
        "--se-select",
        mode,
        "--mask-whole-words",
        "--bpe",
        "bert",
        "--bpe-vocab-file",
        str(fs_dir / "tokenizer" / "vocab.txt"),
        "--sample-break-mode",
        "eos",
        "--mask-prob",
        "0.3",
    )
    d = task.source_dictionary
    words = continued = 0
    for batch in first_batch(task):
        target = batch["target"]
        original = torch.where(target.ne(d.pad()), target, batch["net_input"]["src_tokens"])
        for row in range(len(original)):
            ids = original[row].tolist()
            begins = [i < d.nspecial or not d[i].startswith("##") for i in ids]
            word = np.cumsum(begins)
            chosen = target[row].ne(d.pad()).numpy()
            for w in set(word[chosen]):
                assert chosen[word == w].all(), f"word {w} of row {row} partly masked"
                words += 1
                continued += int((word == w).sum() > 1)
    assert words > 30 and continued > 3  # multi-piece words were selected, whole


@pytest.mark.subprocess
@pytest.mark.slow
def test_fairseq_train_se_from_converted_bert_and_back(scored_bert_data, fs_dir, hf_dir, tmp_path):
    """fairseq-train --task se_mlm --criterion token_ls restores the converted BERT, trains a
    few updates with whole-word SE masking; se-convert to-hf gives it back to HF in HF's order."""
    save = tmp_path / "ckpt"
    result = fairseq_train(
        scored_bert_data,
        str(save),
        *TINY_BERT,
        "--task",
        "se_mlm",
        "--criterion",
        "token_ls",
        "--restore-file",
        str(fs_dir / "model.pt"),
        "--reset-optimizer",
        "--reset-dataloader",
        "--reset-meters",
        "--sample-break-mode",
        "eos",
        "--mask-whole-words",
        "--bpe",
        "bert",
        "--bpe-vocab-file",
        str(fs_dir / "tokenizer" / "vocab.txt"),
        max_update=4,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"Loaded checkpoint {fs_dir / 'model.pt'}" in result.stdout
    assert "num_updates=4" in result.stdout or "num_updates 4" in result.stdout
    ckpt = save / "checkpoint_last.pt"
    assert (
        run(
            "to-hf",
            ckpt,
            tmp_path / "hf",
            "--dict",
            os.path.join(scored_bert_data, "dict.txt"),
            "--tokenizer",
            fs_dir,
            "--check",
        )
        == 0
    )
    trained = transformers.BertForMaskedLM.from_pretrained(tmp_path / "hf")
    original = transformers.BertForMaskedLM.from_pretrained(hf_dir)
    assert (
        transformers.BertTokenizerFast.from_pretrained(tmp_path / "hf").get_vocab()
        == tokenizer().get_vocab()
    )
    # the rows are in HF's order: trained embeddings stay next to the original ones row by row
    a, b = (
        trained.bert.embeddings.word_embeddings.weight,
        original.bert.embeddings.word_embeddings.weight,
    )
    assert not torch.equal(a, b)
    nearest = torch.cdist(a, b).argmin(dim=1)
    assert torch.equal(nearest, torch.arange(ROWS))
