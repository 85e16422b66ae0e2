"""Installation: registration with fairseq, with and without --user-dir."""

import os
import subprocess
import sys

import pytest
from support.fairseq_data import fairseq_train
from support.option_rules import OPTION_RULES, option_argv

import se_fairseq

PACKAGE_DIR = os.path.dirname(os.path.abspath(se_fairseq.__file__))


def python(code, **env):
    run_env = dict(os.environ, **env)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=run_env, check=True
    )
    return out.stdout.strip()


@pytest.mark.subprocess
def test_hook_is_installed_and_imports_nothing_heavy():
    code = (
        "import sys; import se_fairseq; "
        "print('se_fairseq._autoload' in sys.modules, "
        "any(m in sys.modules for m in ('torch', 'numpy', 'fairseq')))"
    )
    assert python(code) == "True False"


@pytest.mark.subprocess
def test_hook_adds_no_module_but_its_own_to_interpreter_start():
    code = "import sys; print(' '.join(sorted(sys.modules)))"
    with_hook = set(python(code).split())
    without = set(python(code, SE_FAIRSEQ_NO_AUTOLOAD="1").split())
    assert with_hook - without == {"se_fairseq", "se_fairseq._autoload"}


@pytest.mark.fairseq
@pytest.mark.slow
@pytest.mark.subprocess
def test_importing_fairseq_registers_task_and_criterion():
    code = (
        "import fairseq; from fairseq.tasks import TASK_REGISTRY; "
        "from fairseq.criterions import CRITERION_REGISTRY; "
        "print('se_mlm' in TASK_REGISTRY, 'token_ls' in CRITERION_REGISTRY)"
    )
    assert python(code).endswith("True True")
    assert python(code, SE_FAIRSEQ_NO_AUTOLOAD="1").endswith("False False")


@pytest.mark.fairseq
@pytest.mark.slow
@pytest.mark.subprocess
def test_looking_fairseq_up_before_importing_it_still_registers():
    """``importlib.util.find_spec("fairseq")`` (an availability check, as the extras and
    many libraries do) must not disarm the hook before the real import."""
    code = (
        "import importlib.util; assert importlib.util.find_spec('fairseq') is not None; "
        "assert importlib.util.find_spec('fairseq') is not None; "
        "import fairseq; from fairseq.tasks import TASK_REGISTRY; "
        "import se_fairseq._autoload as a, sys; "
        "hooked = any(isinstance(f, a._FairseqHook) for f in sys.meta_path); "
        "print('se_mlm' in TASK_REGISTRY, hooked)"
    )
    assert python(code).endswith("True False")


@pytest.mark.fairseq
@pytest.mark.subprocess
def test_training_parser_offers_the_options():
    code = (
        "from fairseq import options; p = options.get_training_parser(); "
        "a = options.parse_args_and_arch(p, ['x', '--task', 'se_mlm', '--criterion', 'token_ls',"
        " '--arch', 'roberta_base', '--se-select', 'sample', '--tls-alpha', '0.2']); "
        "print(a.se_select, a.tls_alpha, a.tls_ref, a.se_metric, a.mask_prob)"
    )
    assert python(code).splitlines()[-1] == "sample 0.2 model correctness 0.15"


@pytest.mark.subprocess
@pytest.mark.slow
def test_fairseq_train_se_mlm_token_ls_trains_checkpoints_and_resumes(scored_corpus, tmp_path):
    save = str(tmp_path / "ckpt")
    first = fairseq_train(
        scored_corpus, save, "--task", "se_mlm", "--criterion", "token_ls", max_update=12
    )
    assert first.returncode == 0, first.stdout[-3000:]
    assert "nll_loss" in first.stdout and "ref_accuracy" in first.stdout
    assert os.path.exists(os.path.join(save, "checkpoint_last.pt"))
    resumed = fairseq_train(
        scored_corpus, save, "--task", "se_mlm", "--criterion", "token_ls", max_update=20
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "Loaded checkpoint" in resumed.stdout and "@ 12 updates" in resumed.stdout
    from se_fairseq.checkpoint_safety import safe_load

    state = safe_load(os.path.join(save, "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == 20


@pytest.mark.subprocess
@pytest.mark.slow
def test_user_dir_pointing_at_the_package_works(scored_corpus, tmp_path):
    result = fairseq_train(
        scored_corpus,
        str(tmp_path / "ckpt"),
        "--user-dir",
        PACKAGE_DIR,
        "--task",
        "se_mlm",
        "--criterion",
        "token_ls",
        max_update=3,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    no_hook = fairseq_train(
        scored_corpus,
        str(tmp_path / "ckpt2"),
        "--user-dir",
        PACKAGE_DIR,
        "--task",
        "se_mlm",
        "--criterion",
        "token_ls",
        max_update=3,
        env={"SE_FAIRSEQ_NO_AUTOLOAD": "1"},
    )
    assert no_hook.returncode == 0, no_hook.stdout[-3000:]


@pytest.mark.fairseq
@pytest.mark.subprocess
def test_a_failing_registration_warns_once_and_fairseq_still_imports():
    code = (
        "import warnings, se_fairseq.plugin as p\n"
        "def broken(): raise RuntimeError('boom')\n"
        "p.register = broken\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import fairseq\n"
        "    from se_fairseq import _autoload\n"
        "    _autoload.warn_failed('again', RuntimeError('x'))\n"
        "ours = [str(w.message) for w in caught if 'se_fairseq' in str(w.message)]\n"
        "print(len(ours), 'boom' in ours[0], hasattr(fairseq, 'tasks'))\n"
    )
    assert python(code) == "1 True True"


@pytest.mark.subprocess
def test_a_failing_pth_hook_warns_instead_of_passing_silently():
    """Run the installed .pth line with the hook module made unimportable."""
    import site
    import sysconfig

    dirs = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    pth = next(
        os.path.join(d, "se_fairseq-autoload.pth")
        for d in dirs
        if os.path.exists(os.path.join(d, "se_fairseq-autoload.pth"))
    )
    code = (
        "import sys, warnings\n"
        "sys.modules['se_fairseq._autoload'] = None\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    with open({pth!r}) as f:\n"
        "        exec(f.read())\n"
        "print([str(w.message)[:38] for w in caught])\n"
    )
    assert python(code, SE_FAIRSEQ_NO_AUTOLOAD="0") == "['se_fairseq: the autoload hook failed (']"


@pytest.mark.subprocess
@pytest.mark.slow
def test_user_dir_naming_another_copy_of_the_installed_package_works(scored_corpus, tmp_path):
    """A checkout next to an installed se-fairseq: fairseq used to stop with 'module name
    (se_fairseq) is not globally unique'; the installed copy is used, and said so."""
    import shutil

    checkout = tmp_path / "checkout" / "se_fairseq"
    shutil.copytree(PACKAGE_DIR, checkout, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    result = fairseq_train(
        scored_corpus,
        str(tmp_path / "ckpt"),
        "--user-dir",
        str(checkout),
        "--task",
        "se_mlm",
        "--criterion",
        "token_ls",
        "--no-save",
        "--disable-validation",
        max_update=2,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "not globally unique" not in result.stdout
    assert (
        f"--user-dir {checkout}: se_fairseq is already loaded from {PACKAGE_DIR}" in result.stdout
    )


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_refused_option_ends_fairseq_train_in_one_line(scored_corpus, tmp_path):
    options, message = next(
        rule.refused[0] for rule in OPTION_RULES if rule.name == "--mask-prob in (0, 1)"
    )
    result = fairseq_train(
        scored_corpus,
        str(tmp_path / "ckpt"),
        "--task",
        "se_mlm",
        "--criterion",
        "token_ls",
        *option_argv(options),
        max_update=2,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout
    assert result.stdout.rstrip().splitlines()[-1] == f"fairseq-train: error: {message}"


@pytest.mark.fairseq
def test_registration_installs_the_one_line_excepthook(capsys):
    """plugin.register() (run when conftest imported fairseq) put the hook in front of
    sys.excepthook: refusals print one line, anything else reaches the hook before it."""
    from se_fairseq.data.score_file import ScoreFileError
    from se_fairseq.tasks.se_mlm_config import SelfEvolutionConfigError, _one_line_refusals

    assert getattr(sys.excepthook, "se_fairseq_one_line", False)
    passed_on = []
    hook = _one_line_refusals(lambda *exc_info: passed_on.append(exc_info[1]))
    program = os.path.basename(sys.argv[0]) or "python"
    for error in (SelfEvolutionConfigError("--x is refused"), ScoreFileError("file y is off")):
        hook(type(error), error, None)
        assert capsys.readouterr().err == f"{program}: error: {error}\n"
    other = RuntimeError("not a refusal")
    hook(RuntimeError, other, None)
    assert passed_on == [other] and capsys.readouterr().err == ""


@pytest.mark.fairseq
@pytest.mark.subprocess
def test_the_excepthook_comes_with_registration_not_with_the_task_import():
    code = (
        "import sys, se_fairseq\n"  # before fairseq: importing the package registers nothing
        "import fairseq, se_fairseq.tasks.se_mlm\n"
        "flag = lambda: getattr(sys.excepthook, 'se_fairseq_one_line', False)\n"
        "before = flag()\n"
        "se_fairseq.register_with_fairseq()\n"
        "installed = sys.excepthook\n"
        "se_fairseq.plugin._registered = False\n"
        "se_fairseq.register_with_fairseq()\n"
        "print(before, flag(), sys.excepthook is installed)"
    )
    assert python(code, SE_FAIRSEQ_NO_AUTOLOAD="1").splitlines()[-1] == "False True True"
