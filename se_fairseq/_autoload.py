"""Registers the plugin with fairseq right after ``import fairseq`` completes.

Installed as a one-line ``.pth`` file, so it runs at every interpreter start:
it must stay tiny and import nothing (not even importlib.abc, which pulls in
typing and would double the start-up time). It adds a meta-path finder that
answers only for the module ``fairseq`` and wraps its loader so that the
plugin registers once fairseq has finished initialising (its registries then
hold fairseq's own tasks, and ``fairseq-train --task se_mlm`` resolves).
"""

import os
import sys

_DISABLE_ENV = "SE_FAIRSEQ_NO_AUTOLOAD"


class _RegisterAfterExec:
    """Wraps fairseq's loader: run it, then register the plugin (once: the hook steps
    aside)."""

    def __init__(self, loader, hook):
        self._loader = loader
        self._hook = hook

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        if self._hook in sys.meta_path:
            sys.meta_path.remove(self._hook)
        try:
            import se_fairseq

            se_fairseq.register_with_fairseq()
        except Exception as err:  # fairseq itself must still import
            warn_failed("could not register se_mlm/token_ls with fairseq", err)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _FairseqHook:
    """A meta-path finder that answers only for ``fairseq``: the real spec, its loader
    wrapped. It stays until fairseq is imported, so that looking fairseq up without
    importing it (``importlib.util.find_spec``, as ``is_available`` checks do) leaves the
    registration armed."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "fairseq":
            return None
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None) if finder is not self else None
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                break
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _RegisterAfterExec(spec.loader, self)
        return spec


_warned = False


def warn_failed(what, err):
    """One warning per process: the plugin is off, fairseq works without it."""
    global _warned
    if _warned:
        return
    _warned = True
    import warnings

    warnings.warn(
        f"se_fairseq: {what} ({type(err).__name__}: {err}); --task se_mlm and "
        f"--criterion token_ls need --user-dir until this is fixed "
        f"(set {_DISABLE_ENV}=1 to silence)",
        RuntimeWarning,
        stacklevel=2,
    )


def install():
    if os.environ.get(_DISABLE_ENV) == "1" or "fairseq" in sys.modules:
        return
    if not any(isinstance(f, _FairseqHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _FairseqHook())


install()
