"""Self-Evolution learning (SE) for masked-LM pretraining, as a fairseq plugin.

Importing this package is cheap: it pulls in neither torch nor fairseq. The task
(``se_mlm``) and criterion (``token_ls``) register with fairseq when fairseq is
imported (see ``_autoload``), or when fairseq imports this package through
``--user-dir``.
"""

import sys

__version__ = "0.1.0"


def register_with_fairseq():
    """Register se_mlm, token_ls and the safe checkpoint loader with fairseq."""
    from . import plugin

    plugin.register()


if "fairseq" in sys.modules:  # imported by fairseq's --user-dir
    register_with_fairseq()
