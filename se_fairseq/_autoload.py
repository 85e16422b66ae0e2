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
    """Wraps fairseq's loader: run it, then register the plugin."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        import se_fairseq

        se_fairseq.register_with_fairseq()

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _FairseqHook:
    """A meta-path finder that answers only for ``fairseq``, once."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "fairseq":
            return None
        sys.meta_path.remove(self)  # one shot: find the real spec, then step aside
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                break
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _RegisterAfterExec(spec.loader)
        return spec


def install():
    if os.environ.get(_DISABLE_ENV) == "1" or "fairseq" in sys.modules:
        return
    if not any(isinstance(f, _FairseqHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _FairseqHook())


install()
