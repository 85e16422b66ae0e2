"""``--user-dir`` naming a copy of this package while the installed one is loaded.

fairseq imports a --user-dir only if no module of its name is loaded, or if the
loaded one lives in that very folder; otherwise it stops with "module name
(se_fairseq) is not globally unique". With se-fairseq installed, the autoload
hook has already imported (and registered) the installed package before
fairseq parses --user-dir, so ``--user-dir <checkout>/se_fairseq`` of a
checkout that is not the installed copy would always stop there. Importing the
second copy would register se_mlm twice, which fairseq refuses as well; so for
a folder that is a se_fairseq package, fairseq's import is skipped with one
warning naming the copy in use.
"""

import logging
import os
import sys

logger = logging.getLogger(__name__)

_PACKAGE = "se_fairseq"


def _is_other_copy(user_dir):
    path = os.path.abspath(user_dir)
    loaded = sys.modules.get(_PACKAGE)
    if os.path.basename(path) != _PACKAGE or loaded is None:
        return False
    in_use = [os.path.realpath(p) for p in getattr(loaded, "__path__", [])]
    return os.path.realpath(path) not in in_use and os.path.isfile(os.path.join(path, "plugin.py"))


def install():
    from fairseq import utils

    original = utils.import_user_module
    if getattr(original, "se_fairseq_wrapped", False):
        return

    def import_user_module(args):
        user_dir = getattr(args, "user_dir", None)
        if user_dir is not None and _is_other_copy(user_dir):
            memo = getattr(original, "memo", set())
            original.memo = memo
            key = os.path.abspath(user_dir)
            if key not in memo:
                memo.add(key)
                logger.warning(
                    f"--user-dir {user_dir}: se_fairseq is already loaded from "
                    f"{list(sys.modules[_PACKAGE].__path__)[0]} (the installed package, "
                    "registered on `import fairseq`); using that copy. Set "
                    "SE_FAIRSEQ_NO_AUTOLOAD=1 to load the --user-dir copy instead"
                )
            return
        return original(args)

    import_user_module.se_fairseq_wrapped = True
    utils.import_user_module = import_user_module
