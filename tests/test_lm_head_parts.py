"""The LM head split before its output bias (scoring.lm_head_parts): the bias added back
equals fairseq's own head bit for bit, the scores equal those of fairseq's head output, and
a head that is not fairseq's plain RobertaLMHead is called as it is."""

import pytest
import torch
from support.fairseq_data import TINY_ROBERTA, setup_task

from se_fairseq import scoring
from se_fairseq.core import scores as core_scores

ARCHS = {"roberta": TINY_ROBERTA, "hf_bert": ["--arch", "hf_bert", *TINY_ROBERTA[2:]]}


def built_model(corpus, arch):
    task, cfg = setup_task(
        corpus, *ARCHS[arch], "--cpu", "--task", "masked_lm", "--criterion", "masked_lm"
    )
    torch.manual_seed(0)
    model = task.build_model(cfg.model).eval()
    with torch.no_grad():  # a trained head has a bias; fairseq starts it at zero
        model.encoder.lm_head.bias.normal_(0.0, 1.0)
    return model


def batch(model, rows=6, length=40):
    vocab = scoring.vocab_size(model)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, vocab - 1, (rows, length), generator=g)
    tokens[:, 0] = 0
    tokens[3, 25:] = 1  # padding
    with torch.inference_mode():
        features, _ = model(tokens, features_only=True)
    return tokens, features


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_the_parts_add_up_to_fairseqs_head_exactly(corpus, arch):
    model = built_model(corpus, arch)
    _, features = batch(model)
    flat = features.reshape(-1, features.size(-1))
    with torch.inference_mode():
        logits, bias = scoring.lm_head_parts(model, flat)
        assert bias is model.encoder.lm_head.bias
        assert torch.equal(logits + bias, model.encoder.output_layer(flat))


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("metric", core_scores.METRICS)
@pytest.mark.parametrize("piece_rows", [3, None])  # softmax pieces of 3 rows, or one piece
def test_scores_and_kept_logits_equal_those_of_fairseqs_head(
    corpus, arch, metric, piece_rows, monkeypatch
):
    model = built_model(corpus, arch)
    tokens, features = batch(model)
    vocab = scoring.vocab_size(model)
    if piece_rows:
        monkeypatch.setattr(core_scores, "SCORE_ELEMENTS", piece_rows * vocab)
    keep = tokens.ne(1)
    with torch.inference_mode():
        head = model.encoder.output_layer(features[keep])
        scores, kept = scoring.score_features(model, features, tokens, 1, metric, keep_logits=True)
    assert torch.equal(kept, head)
    lprobs = torch.log_softmax(head.double(), -1)  # dense float64 reference
    want = core_scores.token_scores_from_lprobs(lprobs, tokens[keep], metric)
    torch.testing.assert_close(scores[keep].double(), want, rtol=0, atol=2e-5)
    assert (scores[~keep] == 0).all()


def test_a_head_with_its_own_forward_is_called_as_it_is(corpus):
    from fairseq.models.roberta.model import RobertaLMHead

    class ShiftedHead(RobertaLMHead):
        def forward(self, features, masked_tokens=None, **kwargs):
            return super().forward(features, masked_tokens) + 1.0

    model = built_model(corpus, "roberta")
    tokens, features = batch(model)
    flat = features[tokens.ne(1)]
    with torch.inference_mode():
        plain, _ = scoring.lm_head_parts(model, flat)
        model.encoder.lm_head.__class__ = ShiftedHead
        logits, bias = scoring.lm_head_parts(model, flat)
        assert bias is None
        assert torch.equal(logits, model.encoder.output_layer(flat))
        assert not torch.equal(logits, plain + model.encoder.lm_head.bias)
        model.encoder.lm_head.__class__ = RobertaLMHead  # plain again, but hooked
        model.encoder.lm_head.register_forward_hook(lambda module, args, out: out * 2)
        logits, bias = scoring.lm_head_parts(model, flat)
        assert bias is None
        assert torch.equal(logits, 2 * (plain + model.encoder.lm_head.bias))
