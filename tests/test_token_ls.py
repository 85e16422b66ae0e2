"""Criterion token_ls (Token-specific Label Smoothing), checked against a dense
computation of its definition and against fairseq's own masked_lm criterion.

For each selected position i the target is (1 - alpha) * onehot(x_i) + alpha * p_ref_i,
p_ref_i being the model's softmax at i on the original (unmasked) input, in eval
mode and without gradient. The dense reference below builds that target tensor
explicitly over the whole vocabulary at every position and sums the
cross-entropy over the selected positions.
"""

import pytest

pytest.importorskip("fairseq", reason="the fairseq side: pip install 'se-fairseq[fairseq]'")

import contextlib
import math

import torch
import torch.nn.functional as F
from fairseq import tasks
from support.fairseq_data import NO_DROPOUT, TINY_ROBERTA, parse_training_args

TASK_ARGS = {
    # fairseq's own task: 80/10/10 replacement, so some selected tokens are not <mask>
    "masked_lm": ["--task", "masked_lm"],
    "se_mlm": ["--task", "se_mlm", "--se-select", "random"],
}
RTOL = 1e-5


def parse(data, *extra):
    return parse_training_args(data, *TINY_ROBERTA, "--cpu", "--seed", "3", *extra)


def make_model_opinionated(model, dictionary):
    """A freshly initialised RoBERTa predicts a nearly uniform distribution, which
    would make p_ref indistinguishable from the uniform one. Perturb the weights
    (peaked, input-dependent predictions) and favour frequent words in the output
    bias (the dictionary is sorted by count), so some predictions are right."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.3)
        bias = model.encoder.lm_head.bias
        nspecial = dictionary.nspecial
        ranks = torch.arange(1, bias.numel() - nspecial + 1, dtype=bias.dtype)
        bias[nspecial:] -= 2.0 * ranks.log()
        bias[:nspecial] -= 10.0


class Setup:
    """A task, a small RoBERTa built by it (train mode) and one training batch."""

    def __init__(self, data, task_name, dropout_args=NO_DROPOUT, task_args=None):
        self.data = data
        self.task_args = [*(task_args or TASK_ARGS[task_name]), *dropout_args]
        cfg = parse(data, *self.task_args, "--criterion", "token_ls")
        self.task = tasks.setup_task(cfg.task)
        torch.manual_seed(1)
        self.model = self.task.build_model(cfg.model)
        make_model_opinionated(self.model, self.task.source_dictionary)
        self.model.train()
        self.task.load_dataset("train")
        itr = self.task.get_batch_iterator(
            self.task.dataset("train"), max_sentences=8, seed=3, num_workers=0
        ).next_epoch_itr(shuffle=True)
        self.sample = next(iter(itr))
        self.pad = self.task.source_dictionary.pad()

    def criterion(self, *extra):
        """A criterion built the way fairseq-train builds it, from command-line flags."""
        cfg = parse(self.data, *self.task_args, *extra)
        return self.task.build_criterion(cfg.criterion)

    def tls(self, alpha, ref="model"):
        return self.criterion(
            "--criterion", "token_ls", "--tls-alpha", str(alpha), "--tls-ref", ref
        )

    @property
    def masked(self):
        return self.sample["target"].ne(self.pad)

    @property
    def original(self):
        src = self.sample["net_input"]["src_tokens"]
        return torch.where(self.masked, self.sample["target"], src)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The model is tiny: one thread is as fast, and does not stall on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=sorted(TASK_ARGS))
def setup(request, corpus):
    s = Setup(corpus, request.param)
    src = s.sample["net_input"]["src_tokens"]
    mask_idx = s.task.source_dictionary.index("<mask>")
    # the batch exercises the recovery of the original input: selected tokens that
    # are <mask>, and selected tokens that are not (kept or replaced at random)
    assert s.masked.sum() > 30
    assert (src[s.masked] == mask_idx).any()
    assert (src[s.masked] != mask_idx).any()
    assert (src[s.masked] != s.sample["target"][s.masked]).any()
    return s


# ---------------------------------------------------------------------------
# the dense reference computation


def dense_reference_probs(model, tokens):
    """Full-vocabulary softmax at every position, eval mode, no gradient."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return F.softmax(model(tokens, features_only=False)[0].float(), dim=-1)
    finally:
        model.train(was_training)


def dense_loss(model, sample, pad, alpha, ref="model", ref_input=None):
    """sum over selected positions of CE((1 - alpha) onehot + alpha p_ref, softmax(logits))."""
    src = sample["net_input"]["src_tokens"]
    target = sample["target"]
    masked = target.ne(pad)
    original = torch.where(masked, target, src)
    logits = model(src, features_only=False)[0]  # (batch, time, vocab): no masked_tokens
    lprobs = F.log_softmax(logits.float(), dim=-1)
    vocab = lprobs.size(-1)
    if ref == "uniform":
        p_ref = torch.full_like(lprobs, 1.0 / vocab)
    else:
        p_ref = dense_reference_probs(model, original if ref_input is None else ref_input)
    soft_target = (1.0 - alpha) * F.one_hot(original, vocab).to(lprobs) + alpha * p_ref
    assert torch.allclose(soft_target.sum(-1), torch.ones(()), atol=1e-5)
    return -(soft_target * lprobs).sum(-1)[masked].sum()


def loss_and_grads(model, compute):
    model.zero_grad(set_to_none=True)
    out = compute()
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out, grads


def assert_grads_close(got, want, rtol=RTOL):
    assert got.keys() == want.keys()
    for name in want:
        g, w = got[name], want[name]
        scale = w.abs().max().item()
        err = (g - w).abs().max().item()
        # relative to the size of the parameter's gradient (entries of a tensor
        # whose largest entry is O(1) can be ~0 and carry float32 rounding)
        assert err <= rtol * scale + 1e-12, f"{name}: max error {err:.3g}, scale {scale:.3g}"


# ---------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5])
def test_loss_and_gradients_equal_dense_formula(setup, alpha):
    model, sample = setup.model, setup.sample
    criterion = setup.tls(alpha)
    (loss, sample_size, log), got_grads = loss_and_grads(model, lambda: criterion(model, sample))
    want, want_grads = loss_and_grads(model, lambda: dense_loss(model, sample, setup.pad, alpha))
    assert sample_size == int(setup.masked.sum())
    torch.testing.assert_close(loss, want, rtol=RTOL, atol=0.0)
    assert_grads_close(got_grads, want_grads)
    assert model.training
    if alpha > 0:  # the comparison can tell p_ref apart from what it must not be
        with torch.no_grad():
            uniform = dense_loss(model, sample, setup.pad, alpha, ref="uniform")
            masked_input = dense_loss(
                model, sample, setup.pad, alpha, ref_input=sample["net_input"]["src_tokens"]
            )
        for wrong in (uniform, masked_input):
            assert abs(wrong.item() - want.item()) > 10 * RTOL * abs(want.item())


def test_reference_forward_is_in_eval_mode_under_dropout(corpus):
    """With dropout on, the criterion (train mode) equals the dense formula only if
    p_ref comes from an eval-mode forward: the main forward draws the same dropout
    masks in both (same seed, same order), the eval forward draws none."""
    s = Setup(corpus, "masked_lm", dropout_args=["--dropout", "0.2", "--attention-dropout", "0.2"])
    criterion = s.tls(0.5)
    torch.manual_seed(123)
    loss, _, _ = criterion(s.model, s.sample)
    torch.manual_seed(123)
    want = dense_loss(s.model, s.sample, s.pad, 0.5)
    torch.testing.assert_close(loss, want, rtol=RTOL, atol=0.0)
    torch.manual_seed(124)  # the dropout is real: another seed gives another loss
    other = dense_loss(s.model, s.sample, s.pad, 0.5)
    assert abs(other.item() - want.item()) > 10 * RTOL * abs(want.item())


def test_alpha_zero_is_fairseq_masked_lm_bit_for_bit(setup, monkeypatch):
    model, sample = setup.model, setup.sample
    criterion = setup.tls(0.0)
    # no reference forward at alpha 0 (it would weigh nothing), and no reference counts
    monkeypatch.setattr(criterion, "_reference_probs", lambda *a: pytest.fail("p_ref at alpha 0"))
    tls_loss, tls_size, tls_log = criterion(model, sample)
    assert int(tls_log["ref_total"]) == 0 and int(tls_log["ref_correct"]) == 0
    mlm_loss, mlm_size, mlm_log = setup.criterion("--criterion", "masked_lm")(model, sample)
    assert torch.equal(tls_loss, mlm_loss)
    assert int(tls_size) == int(mlm_size)
    assert torch.equal(tls_log["loss"], mlm_log["loss"])
    # uniform reference with alpha 0 is the same criterion
    assert torch.equal(setup.tls(0.0, ref="uniform")(model, sample)[0], mlm_loss)


@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_uniform_reference_is_label_smoothing(setup, alpha):
    model, sample = setup.model, setup.sample
    criterion = setup.tls(alpha, ref="uniform")
    (loss, sample_size, log), got_grads = loss_and_grads(model, lambda: criterion(model, sample))
    want, want_grads = loss_and_grads(
        model, lambda: dense_loss(model, sample, setup.pad, alpha, ref="uniform")
    )
    torch.testing.assert_close(loss, want, rtol=RTOL, atol=0.0)
    assert_grads_close(got_grads, want_grads)
    # and PyTorch's own label smoothing, which spreads alpha uniformly over the vocabulary
    masked = setup.masked
    with torch.no_grad():
        logits = model(**sample["net_input"])[0][masked].float()
        torch_ls = F.cross_entropy(
            logits, sample["target"][masked], label_smoothing=alpha, reduction="sum"
        )
    torch.testing.assert_close(loss.detach(), torch_ls, rtol=RTOL, atol=0.0)
    assert log["ref_total"] == 0 and log["ref_correct"] == 0
    assert sample_size == int(masked.sum())


def test_reference_forward_restores_mode_and_makes_no_gradients(setup):
    model, sample = setup.model, setup.sample
    criterion = setup.tls(0.1)
    masked = setup.masked
    model.zero_grad(set_to_none=True)
    model.train()
    probs = criterion._reference_probs(model, sample, masked)
    assert model.training and all(m.training for m in model.modules())
    assert not probs.requires_grad and probs.grad_fn is None
    assert all(p.grad is None for p in model.parameters())
    want = dense_reference_probs(model, setup.original)[masked]
    torch.testing.assert_close(probs, want, rtol=1e-4, atol=1e-6)
    assert model.training

    model.eval()  # a model in eval mode stays in eval mode
    criterion._reference_probs(model, sample, masked)
    assert not model.training and not any(m.training for m in model.modules())
    model.train()

    # the whole criterion call: train mode kept, gradients only once backward runs
    loss, _, _ = criterion(model, sample)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad(set_to_none=True)


def test_logging_outputs(setup):
    model, sample = setup.model, setup.sample
    masked, target = setup.masked, sample["target"]
    with torch.no_grad():
        loss0, _, _ = setup.tls(0.0)(model, sample)
        loss, sample_size, log = setup.tls(0.1)(model, sample)
        logits = model(sample["net_input"]["src_tokens"], features_only=False)[0]
        ref = dense_reference_probs(model, setup.original)
    assert torch.equal(log["nll_loss"], loss0)
    assert torch.equal(log["loss"], loss.detach())
    assert not log["loss"].requires_grad and not log["nll_loss"].requires_grad
    correct = int((logits.argmax(-1) == target)[masked].sum())
    ref_correct = int((ref.argmax(-1) == target)[masked].sum())
    assert 0 < correct < int(masked.sum())  # the count is not trivially 0 or all
    assert 0 < ref_correct < int(masked.sum())
    assert log["correct"] == correct
    assert log["ref_correct"] == ref_correct
    assert log["ref_total"] == log["sample_size"] == sample_size == int(masked.sum())
    assert log["ntokens"] == sample["ntokens"] and log["nsentences"] == sample["nsentences"]


def test_batch_without_selected_tokens(setup):
    model = setup.model
    sample = dict(setup.sample)
    sample["target"] = torch.full_like(sample["target"], setup.pad)
    model.zero_grad(set_to_none=True)
    loss, sample_size, log = setup.tls(0.1)(model, sample)
    assert sample_size == 0 and loss.item() == 0.0
    loss.backward()  # the zero loss still has a graph (all workers run backward)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    model.zero_grad(set_to_none=True)
    for key in ("loss", "nll_loss"):  # logged values must not hold the autograd graph
        assert not log[key].requires_grad
    assert log["sample_size"] == log["correct"] == log["ref_total"] == 0


def test_online_batch_without_selected_tokens(setup):
    """--se-online hands over p_ref at the selected positions: none here (0 rows),
    while the criterion projects every position of an empty selection."""
    model = setup.model
    sample = dict(setup.sample)
    sample["target"] = torch.full_like(sample["target"], setup.pad)
    sample["tls_ref_probs"] = torch.zeros(0, len(setup.task.source_dictionary))
    model.zero_grad(set_to_none=True)
    loss, sample_size, log = setup.tls(0.1)(model, sample)
    assert sample_size == 0 and loss.item() == 0.0
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    model.zero_grad(set_to_none=True)
    assert log["sample_size"] == log["correct"] == log["ref_correct"] == log["ref_total"] == 0


@pytest.mark.parametrize("alpha", ["1.5", "-0.1"])
def test_alpha_out_of_range_is_an_error(setup, alpha):
    with pytest.raises(ValueError, match=r"tls-alpha.*\[0, 1\]"):
        setup.criterion("--criterion", "token_ls", "--tls-alpha", alpha)


@pytest.mark.parametrize("alpha", ["0", "1"])
def test_alpha_at_the_ends_of_the_range_is_accepted(setup, alpha):
    criterion = setup.criterion("--criterion", "token_ls", "--tls-alpha", alpha)
    assert criterion.alpha == float(alpha) and criterion.reference == "model"
    assert criterion.logging_outputs_can_be_summed() is True


@pytest.mark.parametrize(
    "alpha, ref, needs",
    [(0.0, "model", False), (0.1, "model", True), (1.0, "model", True), (0.1, "uniform", False)],
)
def test_needs_reference_probs_says_when_forward_reads_them(setup, alpha, ref, needs):
    """The contract with the --se-online step (ReferenceConsumer): p_ref left in the batch
    changes the loss exactly when the criterion says it needs it."""
    criterion = setup.tls(alpha, ref)
    assert criterion.needs_reference_probs() is needs
    planted = dict(setup.sample)
    rows, vocab = int(setup.masked.sum()), len(setup.task.source_dictionary)
    planted["tls_ref_probs"] = F.one_hot(torch.zeros(rows, dtype=torch.long), vocab).float()
    with torch.no_grad():
        own, given = (criterion(setup.model, s)[0] for s in (setup.sample, planted))
    assert (not torch.equal(own, given)) is needs


def test_topk_se_mlm_batch_equals_dense_formula(scored_corpus):
    """The SE setting itself: se_mlm masks the top-k tokens by score (all of them
    become <mask>), token_ls trains on them; loss and gradients are the dense
    (1 - a) onehot + a p_ref cross-entropy over every position of the batch."""
    s = Setup(scored_corpus, None, task_args=["--task", "se_mlm", "--se-select", "topk"])
    model, sample, masked = s.model, s.sample, s.masked
    src = sample["net_input"]["src_tokens"]
    assert masked.sum() > 30 and (src[masked] == s.task.mask_idx).all()
    for alpha in (0.1, 0.5):
        criterion = s.tls(alpha)
        (loss, sample_size, log), got_grads = loss_and_grads(
            model, lambda: criterion(model, sample)
        )
        want, want_grads = loss_and_grads(model, lambda: dense_loss(model, sample, s.pad, alpha))
        torch.testing.assert_close(loss, want, rtol=RTOL, atol=0.0)
        assert_grads_close(got_grads, want_grads)
        assert torch.is_tensor(sample_size) and sample_size == int(masked.sum())
        with torch.no_grad():
            uniform = dense_loss(model, sample, s.pad, alpha, ref="uniform")
        assert abs(uniform.item() - want.item()) > 10 * RTOL * abs(want.item())


@contextlib.contextmanager
def host_syncs_outside(model):
    """Records every conversion of a tensor to a Python value (bool, int, float,
    item, tolist: each one a device-to-host sync on a GPU) made outside the model's
    own forward (fairseq's encoder makes some of its own)."""
    calls, depth = [], [0]

    def enter(*_):
        depth[0] += 1

    def leave(*_):
        depth[0] -= 1

    hooks = [model.register_forward_pre_hook(enter), model.register_forward_hook(leave)]
    names = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist")
    originals = {name: getattr(torch.Tensor, name) for name in names}

    def spy(name):
        def method(self, *args, **kwargs):
            if depth[0] == 0:
                calls.append(name)
            return originals[name](self, *args, **kwargs)

        return method

    try:
        for name in names:
            setattr(torch.Tensor, name, spy(name))
        yield calls
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)
        for h in hooks:
            h.remove()


@pytest.mark.parametrize(
    "alpha,ref,empty",
    [
        (0.1, "model", False),
        (0.1, "uniform", False),
        (0.0, "model", False),
        (0.1, "model", True),
    ],
)
def test_forward_makes_no_host_sync(setup, alpha, ref, empty):
    """Counts stay tensors (as in fairseq's masked_lm), and an empty selection is
    handled on the device: token_ls itself never asks the device for a value."""
    model, sample = setup.model, dict(setup.sample)
    if empty:
        sample["target"] = torch.full_like(sample["target"], setup.pad)
    criterion = setup.tls(alpha, ref)
    with host_syncs_outside(model) as calls:
        loss, sample_size, log = criterion(model, sample)
    assert calls == []
    assert torch.is_tensor(sample_size) and torch.is_tensor(log["correct"])
    with host_syncs_outside(model) as calls:  # the spy sees what the old code did
        int(sample_size)
    assert calls == ["__int__"]


def test_reduce_metrics_takes_the_tensor_counts(setup):
    """What fairseq's trainer does with the logging outputs: sum them (across
    workers too) and reduce; the counts are tensors, as fairseq's masked_lm's."""
    from fairseq.logging import metrics

    criterion = setup.tls(0.1)
    with torch.no_grad():
        log = criterion(setup.model, setup.sample)[2]
    logs = [log, dict(log)]  # two workers with the same batch
    n = 2 * int(setup.masked.sum())
    with metrics.aggregate() as agg:
        criterion.reduce_metrics(logs)
    values = agg.get_smoothed_values()
    assert values["loss"] == pytest.approx(round(2 * log["loss"].item() / n / math.log(2), 3))
    assert values["nll_loss"] == pytest.approx(
        round(2 * log["nll_loss"].item() / n / math.log(2), 3)
    )
    assert values["accuracy"] == pytest.approx(round(100 * 2 * int(log["correct"]) / n, 2))
    assert values["ref_accuracy"] == pytest.approx(round(100 * 2 * int(log["ref_correct"]) / n, 2))
    assert 0 < values["accuracy"] < 100 and 0 < values["ref_accuracy"] < 100


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.7, 1.0])
@pytest.mark.parametrize("ref", ["model", "uniform"])
def test_tls_loss_function_equals_the_dense_soft_target_cross_entropy(alpha, ref):
    """The pure loss function against the definition: build the soft target densely."""
    from se_fairseq.core.tls import token_label_smoothed_loss

    g = torch.Generator().manual_seed(0)
    positions, vocab, pad = 40, 30, 1
    lprobs = torch.log_softmax(torch.randn(positions, vocab, generator=g, dtype=torch.float64), -1)
    target = torch.randint(0, vocab, (positions,), generator=g)
    target[::7] = pad  # ignored positions
    p_ref = torch.softmax(torch.randn(positions, vocab, generator=g, dtype=torch.float64), -1)
    reference = p_ref if ref == "model" else torch.full_like(p_ref, 1.0 / vocab)
    soft = (1 - alpha) * F.one_hot(target, vocab).double() + alpha * reference
    keep = target.ne(pad)
    want_loss = -(soft * lprobs).sum(-1)[keep].sum()
    want_nll = -lprobs[torch.arange(positions), target][keep].sum()
    loss, nll = token_label_smoothed_loss(
        lprobs, target, alpha, p_ref if ref == "model" else None, ignore_index=pad
    )
    assert torch.allclose(loss, want_loss, rtol=1e-12) and torch.allclose(nll, want_nll, rtol=1e-12)


def test_reduce_metrics_weights_rounding_and_edge_counts():
    """reduce_metrics on logging outputs written by hand: values in bits rounded as logged
    (loss 3 decimals, accuracies 2), weighted by sample size across calls, perplexity of
    the nll, no ref_accuracy without reference counts, a batch of one masked token kept
    and a batch of none dropped."""
    from fairseq.logging import metrics

    from se_fairseq.criterions.token_ls import TokenLabelSmoothingCriterion as C

    def log(loss, nll, n, correct, ref_correct, ref_total):
        return {
            "loss": loss,
            "nll_loss": nll,
            "sample_size": n,
            "correct": correct,
            "ref_correct": ref_correct,
            "ref_total": ref_total,
            "ntokens": 10,
            "nsentences": 1,
        }

    with metrics.aggregate() as agg:
        C.reduce_metrics([log(6.0, 2.0, 3, 1, 2, 3)])  # per-token losses unlike the next
        C.reduce_metrics([log(1.0, 1.0, 1, 1, 1, 1)])  # one masked token: still counted
        C.reduce_metrics([log(9.0, 9.0, 0, 0, 0, 0)])  # nothing masked: nothing logged
    v = agg.get_smoothed_values()
    ln2 = math.log(2)
    # fairseq's meters average the unrounded values weighted by sample size, then round
    loss = (3 * (6.0 / 3 / ln2) + 1 * (1.0 / ln2)) / 4
    nll = (3 * (2.0 / 3 / ln2) + 1 * (1.0 / ln2)) / 4
    assert v["loss"] == pytest.approx(round(loss, 3), abs=1e-9)
    assert v["nll_loss"] == pytest.approx(round(nll, 3), abs=1e-9)
    assert v["accuracy"] == pytest.approx(round(100.0 * (1 + 1) / (3 + 1), 2), abs=1e-9)
    assert v["ref_accuracy"] == pytest.approx(round(100.0 * (2 + 1) / (3 + 1), 2), abs=1e-9)
    assert v["ppl"] == pytest.approx(round(2 ** v["nll_loss"], 2))
    with metrics.aggregate() as agg:
        C.reduce_metrics([log(3.0, 2.0, 3, 1, 0, 0)])  # --tls-alpha 0 / uniform: no ref counts
    assert "ref_accuracy" not in agg.get_smoothed_values()
    assert agg.get_smoothed_values()["accuracy"] == pytest.approx(33.33)


def test_tls_loss_function_without_ignore_index_counts_every_position():
    """ignore_index=None: no target is ignored, not even one equal to torch's default
    ignore value's magnitude (100) or the pad id."""
    from se_fairseq.core.tls import token_label_smoothed_loss

    g = torch.Generator().manual_seed(1)
    positions, vocab = 12, 128
    lprobs = torch.log_softmax(torch.randn(positions, vocab, generator=g, dtype=torch.float64), -1)
    target = torch.randint(0, vocab, (positions,), generator=g)
    target[:4] = torch.tensor([100, 1, 101, 99])
    p_ref = torch.softmax(torch.randn(positions, vocab, generator=g, dtype=torch.float64), -1)
    for alpha, ref in ((0.0, None), (0.3, p_ref), (0.3, None)):
        reference = p_ref if ref is not None else torch.full_like(p_ref, 1.0 / vocab)
        soft = (1 - alpha) * F.one_hot(target, vocab).double() + alpha * reference
        loss, nll = token_label_smoothed_loss(lprobs, target, alpha, ref)
        torch.testing.assert_close(loss, -(soft * lprobs).sum(), rtol=1e-12, atol=0.0)
        torch.testing.assert_close(
            nll, -lprobs[torch.arange(positions), target].sum(), rtol=1e-12, atol=0.0
        )


def test_bf16_model_gets_a_float32_loss_and_reference(setup):
    """Under --bf16 (or --fp16) the logits are half precision; the log-softmax and p_ref
    are computed in float32, as fairseq's masked_lm computes its loss."""
    import copy

    model = copy.deepcopy(setup.model).bfloat16()
    criterion = setup.tls(0.5)
    loss, _, log = criterion(model, setup.sample)
    assert loss.dtype == torch.float32 and log["nll_loss"].dtype == torch.float32
    masked = setup.masked
    ref = criterion._reference_probs(model, setup.sample, masked)
    assert ref.dtype == torch.float32
    torch.testing.assert_close(ref.sum(-1), torch.ones(int(masked.sum())), rtol=0, atol=1e-5)
    want = dense_loss(model, setup.sample, setup.pad, 0.5)
    torch.testing.assert_close(loss, want, rtol=2e-2, atol=0.0)  # bf16 logits, same formula
