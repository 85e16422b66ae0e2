"""--se-online: scores from the live model, one reference forward per step."""

import numpy as np
import pytest
import torch
from support.fairseq_data import TINY_ROBERTA, fairseq_train, setup_task

from se_fairseq.core.masking import SelfEvolutionMasker
from se_fairseq.core.scores import token_scores_from_lprobs


def setup(data, *extra, criterion="token_ls"):
    task, cfg = setup_task(
        data,
        *TINY_ROBERTA,
        "--cpu",
        "--seed",
        "5",
        "--task",
        "se_mlm",
        "--se-online",
        "--criterion",
        criterion,
        "--dropout",
        "0.1",
        "--optimizer",
        "adam",
        "--lr",
        "1e-3",
        *extra,
    )
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    return task, model, criterion, cfg


def first_batch(task, batch_size=8):
    task.load_dataset("train")
    itr = task.get_batch_iterator(
        task.dataset("train"), max_sentences=batch_size, seed=5, num_workers=0
    ).next_epoch_itr(shuffle=True)
    return next(iter(itr))


@pytest.mark.parametrize(
    "metric,select", [("correctness", "topk"), ("confidence", "topk"), ("correctness", "sample")]
)
def test_online_selection_equals_offline_with_same_model_scores(corpus, metric, select):
    task, model, criterion, _ = setup(corpus, "--se-metric", metric, "--se-select", select)
    batch = first_batch(task)
    assert "se_online_seeds" in batch
    tokens = batch["net_input"]["src_tokens"]
    masked = task.mask_online(batch, model, criterion)
    assert model.training  # restored
    # offline path, fed with dense scores of the same model state (eval mode, full logits)
    model.eval()
    with torch.no_grad():
        lprobs = torch.log_softmax(model(tokens)[0].double(), dim=-1)
    model.train()
    scores = token_scores_from_lprobs(lprobs, tokens, metric).float()
    offline = SelfEvolutionMasker(
        task.source_dictionary, task.mask_idx, mask_prob=0.15, mode=select, seed=5
    )
    source, target = offline(tokens, scores, batch["id"].numpy(), epoch=1)
    # The live scores are fp32 from the fused path, these are fp64 from full logits: two
    # positions whose scores agree to float32 rounding may swap across the top-k
    # boundary. Any row that differs must differ only there, by one swap of such a pair.
    assert masked["target"].ne(1).sum() > 0
    for row in (masked["target"] != target).any(dim=1).nonzero().flatten().tolist():
        only_online = (masked["target"][row] != 1) & (target[row] == 1)
        only_offline = (target[row] != 1) & (masked["target"][row] == 1)
        assert only_online.sum() == only_offline.sum() == 1, row
        a, b = scores[row][only_online], scores[row][only_offline]
        torch.testing.assert_close(a, b, rtol=1e-5, atol=0.0)
        masked["target"][row], masked["net_input"]["src_tokens"][row] = target[row], source[row]
    assert torch.equal(masked["target"], target)
    assert torch.equal(masked["net_input"]["src_tokens"], source)


def test_one_reference_forward_per_step_shared_with_tls(corpus):
    task, model, criterion, cfg = setup(corpus, "--tls-alpha", "0.3")
    from fairseq.optim import build_optimizer

    optimizer = build_optimizer(cfg.optimizer, list(model.parameters()))
    batch = first_batch(task)
    calls = []
    handle = model.encoder.sentence_encoder.register_forward_hook(
        lambda m, i, o: calls.append(m.training)
    )
    seen = {}
    original = criterion.forward

    def spy(model_, sample, reduce=True):
        seen["ref"] = sample.get("tls_ref_probs")
        seen["sample"] = sample
        return original(model_, sample, reduce)

    criterion.forward = spy
    loss, sample_size, log = task.train_step(batch, model, criterion, optimizer, update_num=0)
    handle.remove()
    assert calls == [False, True], "one eval-mode reference forward, then the training forward"
    # the shared p_ref is the eval-mode prediction on the unmasked input at the selected positions
    sample = seen["sample"]
    selected = sample["target"].ne(1)
    model.eval()
    with torch.no_grad():
        expected = torch.softmax(model(batch["net_input"]["src_tokens"])[0].float(), -1)[selected]
    model.train()
    torch.testing.assert_close(seen["ref"], expected, rtol=1e-4, atol=1e-6)
    assert sample_size == int(selected.sum()) and log["ref_total"] == sample_size


def test_online_needs_token_ls(corpus):
    with pytest.raises(ValueError, match="--se-online needs --criterion token_ls"):
        setup(corpus, criterion="masked_lm")


def test_validation_uses_random_masking(corpus):
    task, _, _, _ = setup(corpus)
    task.load_dataset("valid")
    batch = task.dataset("valid").collater([task.dataset("valid")[i] for i in range(4)])
    assert "se_online_seeds" not in batch and batch["target"].ne(1).any()


def final_weights(path):
    from se_fairseq.checkpoint_safety import safe_load

    return safe_load(path)["model"]


@pytest.mark.subprocess
@pytest.mark.slow
def test_online_training_resumes_the_same_way(corpus, tmp_path):
    args = ["--task", "se_mlm", "--criterion", "token_ls", "--se-online", "--dropout", "0.1"]
    straight = fairseq_train(corpus, str(tmp_path / "a"), *args, max_update=10)
    assert straight.returncode == 0, straight.stdout[-3000:]
    first = fairseq_train(corpus, str(tmp_path / "b"), *args, max_update=5)
    assert first.returncode == 0, first.stdout[-3000:]
    resumed = fairseq_train(corpus, str(tmp_path / "b"), *args, max_update=10)
    assert resumed.returncode == 0 and "Loaded checkpoint" in resumed.stdout
    a = final_weights(str(tmp_path / "a" / "checkpoint_last.pt"))
    b = final_weights(str(tmp_path / "b" / "checkpoint_last.pt"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    assert "ref_accuracy" in straight.stdout
    assert np.isfinite(float(straight.stdout.split("| loss ")[-1].split()[0]))
