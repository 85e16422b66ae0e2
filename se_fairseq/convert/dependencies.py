"""The optional imports: transformers and safetensors (the ``[hf]`` extra) and fairseq
with the plugin registered. Importing this module imports none of them."""

import contextlib

from .errors import MissingDependencyError

INSTALL_HINT = (
    "se-convert needs the Hugging Face extras: pip install 'se-fairseq[hf]' "
    "(or: pip install transformers safetensors)"
)


def require_transformers():
    """Import transformers (and safetensors) or raise :class:`MissingDependencyError`."""
    try:
        import safetensors.torch  # noqa: F401
        import transformers
    except ImportError as err:
        raise MissingDependencyError(f"{INSTALL_HINT} ({err})") from None
    return transformers


@contextlib.contextmanager
def quiet_transformers(transformers):
    """Loading problems are reported here, as refusals: no transformers warnings or
    progress bars while loading; the caller's settings come back afterwards."""
    log = transformers.logging
    verbosity, bars = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        yield
    finally:
        log.set_verbosity(verbosity)
        if bars:
            log.enable_progress_bar()


def import_fairseq():
    """Import fairseq with the plugin registered: its checkpoint loading is then
    ``torch.load(weights_only=True)`` with the allow-list (also when autoload is off),
    and ``--arch hf_bert*`` exists. Without fairseq: :class:`MissingDependencyError`
    naming the extra."""
    from se_fairseq.extras import MissingExtraError, require_fairseq

    try:
        require_fairseq("se-convert (a fairseq checkpoint on one side)")
    except MissingExtraError as err:
        raise MissingDependencyError(str(err)) from None
    import fairseq  # noqa: F401

    import se_fairseq

    se_fairseq.register_with_fairseq()
