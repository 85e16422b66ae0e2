"""The core's online step (se_fairseq.core.online.select_online) on plain torch modules:
excess-loss selection against a dense float64 formula, a user score function, and the
grouping of rows under the logits budget.
"""

import pytest
import torch

from se_fairseq.core import scores as core_scores
from se_fairseq.core.masking import SelfEvolutionMasker, row_seeds
from se_fairseq.core.online import Reference, select_online
from se_fairseq.ops.reference import rounded_count

VOCAB, DIM = 30, 8


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, VOCAB, (5, 12), generator=g)
    tokens[:, 0] = 0
    tokens[3, 9:] = 1
    live = torch.randn(5, 12, DIM, generator=g)
    ref = torch.randn(5, 12, DIM, generator=g)
    w_live, w_ref = torch.randn(VOCAB, DIM, generator=g), torch.randn(VOCAB, DIM, generator=g)
    bias = torch.randn(VOCAB, generator=g)
    masker = SelfEvolutionMasker.for_vocabulary(
        VOCAB, 3, [0, 1, 2], pad=-100, mask_prob=0.3, mode="topk", seed=2
    )
    seeds = torch.from_numpy(row_seeds(2, 1, list(range(5))))
    return tokens, live, ref, w_live, w_ref, bias, masker, seeds


def _head(weight, bias=None):
    return lambda rows: (rows @ weight.T, bias)


def _correctness64(features, weight, bias, tokens):
    logits = features.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    lprobs = torch.log_softmax(logits, -1)
    return -lprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _topk_reference(scores, eligible, seeds):
    """The masker's top-k written out: each row's k = floor(0.3 n + u) highest eligible."""
    count = rounded_count(0.3, eligible.sum(1).numpy(), seeds.numpy().view("uint64"))
    chosen = torch.zeros_like(eligible)
    for r in range(len(scores)):
        ranked = scores[r].masked_fill(~eligible[r], float("-inf")).argsort(descending=True)
        chosen[r, ranked[: int(count[r])]] = True
    return chosen


def test_excess_selects_the_top_k_of_live_minus_reference_loss():
    tokens, live, ref, w_live, w_ref, bias, masker, seeds = _setup()
    eligible = tokens.gt(2)
    step = select_online(
        live, tokens, eligible, seeds, masker, "excess", _head(w_live, bias), VOCAB,
        reference=Reference(ref, _head(w_ref), VOCAB), want_ref=True,
    )  # fmt: skip
    excess = _correctness64(live, w_live, bias, tokens) - _correctness64(ref, w_ref, None, tokens)
    want = _topk_reference(excess.float(), eligible, seeds)
    assert torch.equal(step.target.ne(-100), want)
    # p_ref is the live model's prediction at the selected positions
    logits = live[want].double() @ w_live.double().T + bias.double()
    torch.testing.assert_close(
        step.ref_probs.double(), torch.softmax(logits, -1), atol=1e-6, rtol=1e-5
    )


def test_excess_needs_its_reference_and_only_it_takes_one():
    tokens, live, ref, w_live, w_ref, bias, masker, seeds = _setup()
    with pytest.raises(ValueError, match="reference model"):
        select_online(live, tokens, tokens.gt(2), seeds, masker, "excess", _head(w_live), VOCAB)
    with pytest.raises(ValueError, match="reference model"):
        select_online(
            live, tokens, tokens.gt(2), seeds, masker, "correctness", _head(w_live), VOCAB,
            reference=Reference(ref, _head(w_ref), VOCAB),
        )  # fmt: skip


def test_a_user_score_function_sees_eligible_logits_and_selects_by_its_scores():
    tokens, live, _, w_live, _, bias, masker, seeds = _setup(3)
    eligible = tokens.gt(2)
    seen = []

    def rarity(logits, ids):  # a user's policy: higher ids are rarer here
        seen.append((logits.shape, ids.clone()))
        return ids.float()

    step = select_online(live, tokens, eligible, seeds, masker, rarity, _head(w_live, bias), VOCAB)
    assert sum(s[0][0] for s in seen) == int(eligible.sum()) and all(s[0][1] == VOCAB for s in seen)
    assert torch.equal(torch.cat([s[1] for s in seen]), tokens[eligible])
    chosen = step.target.ne(-100)
    assert torch.equal(
        chosen, masker.mask(tokens, tokens.float(), seeds, scored=eligible)[1].ne(-100)
    )
    # a score function giving correctness selects what the built-in selects
    as_function = select_online(
        live, tokens, eligible, seeds, masker,
        lambda logits, ids: core_scores.token_scores_from_logits(logits, ids, "correctness"),
        _head(w_live, bias), VOCAB,
    )  # fmt: skip
    built_in = select_online(
        live, tokens, eligible, seeds, masker, "correctness", _head(w_live, bias), VOCAB
    )
    assert torch.equal(as_function.target, built_in.target)


def test_rows_grouped_under_the_budget_select_and_keep_p_ref_as_one_pass(monkeypatch):
    """A budget of one row's logits: the rows are scored a row at a time and p_ref comes from
    each row's own logits, with the selection and p_ref of the budget that fits them all."""
    tokens, live, _, w_live, _, bias, masker, seeds = _setup(5)
    eligible = tokens.gt(2)
    whole = select_online(
        live, tokens, eligible, seeds, masker, "confidence", _head(w_live, bias), VOCAB,
        want_ref=True,
    )  # fmt: skip
    calls = []
    head = _head(w_live, bias)

    def counting(rows):
        calls.append(rows.size(0))
        return head(rows)

    monkeypatch.setattr(core_scores, "LOGITS_BUDGET", tokens.size(1) * VOCAB)
    grouped = select_online(
        live, tokens, eligible, seeds, masker, "confidence", counting, VOCAB, want_ref=True
    )
    assert torch.equal(grouped.target, whole.target) and torch.equal(grouped.source, whole.source)
    torch.testing.assert_close(grouped.ref_probs, whole.ref_probs)
    # one head call per row (its eligible positions), none to recompute p_ref
    assert calls == eligible.sum(1).tolist()
