"""Registration of the plugin's parts with fairseq (called once fairseq is imported).

Besides the task, criterion and architectures, registration installs the process-wide
pieces: fairseq compatibility fixes, the safe checkpoint loader, the --user-dir guard,
and the sys.excepthook that ends fairseq-train on a refusal of se_mlm with one line
(se_mlm_config.install_one_line_refusals).
"""

_registered = False


def register():
    global _registered
    if _registered:
        return
    _registered = True
    from . import checkpoint_safety, fairseq_compat, user_dir
    from .criterions import token_ls  # noqa: F401
    from .models import bert  # noqa: F401  (--arch hf_bert_base, hf_bert_large)
    from .tasks import se_mlm, se_mlm_config  # noqa: F401

    se_mlm_config.install_one_line_refusals()
    fairseq_compat.install()
    checkpoint_safety.install()
    user_dir.install()
