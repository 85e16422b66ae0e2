"""Start mutmut (3.x) so that the tests import the mutated copy of se_fairseq.

The installed package's .pth hook imports ``se_fairseq`` (the work tree's) at interpreter
start; mutmut puts ``mutants/`` first on sys.path only later. Forget the early import so
that every later ``import se_fairseq`` (the fairseq registration hook included) finds the
copy under ``mutants/``.
"""

import sys

for name in [m for m in sys.modules if m == "se_fairseq" or m.startswith("se_fairseq.")]:
    del sys.modules[name]

from mutmut.__main__ import cli  # noqa: E402

sys.argv[0] = "mutmut"
cli()
