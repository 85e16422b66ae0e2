"""se-bench: both pipelines run whole epochs and the printed ratio is theirs."""
import re
import subprocess


def test_se_bench_compares_se_mlm_with_masked_lm(scored_corpus):
    result = subprocess.run(
        ["se-bench", scored_corpus, "--task", "se_mlm", "--se-select", "topk",
         "--tokens-per-sample", "64", "--batch-size", "8", "--num-workers", "1", "--rounds", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    rates = dict(re.findall(r"^(masked_lm \(baseline\)|se_mlm --se-select topk)\s+([\d.]+)",
                            result.stdout, flags=re.M))
    assert len(rates) == 2, result.stdout
    ratio = float(re.search(r"ratio se_mlm / masked_lm \(batches/s\): ([\d.]+)",
                            result.stdout).group(1))
    expected = float(rates["se_mlm --se-select topk"]) / float(rates["masked_lm (baseline)"])
    assert abs(ratio - expected) < 0.02 * expected + 0.01
    rounds = re.findall(r"^round (\d)/2 .* (\d+) batches", result.stdout, flags=re.M)
    assert len(rounds) == 4 and len({b for _, b in rounds}) == 1  # same batches per epoch
