"""Registration of the plugin's parts with fairseq (called once fairseq is imported)."""

_registered = False


def register():
    global _registered
    if _registered:
        return
    _registered = True
    from . import checkpoint_safety, fairseq_compat, user_dir
    from .criterions import token_ls  # noqa: F401
    from .models import bert  # noqa: F401  (--arch hf_bert_base, hf_bert_large)
    from .tasks import se_mlm  # noqa: F401

    fairseq_compat.install()
    checkpoint_safety.install()
    user_dir.install()
