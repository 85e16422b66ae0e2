"""Folders the harness builds whole (a binarized task, a task's text, a converted
checkpoint): written under a scratch name of this process, then renamed into place.

The scratch folder is this process's own (``core.files.temp_path``), so nothing another
process or the user made is touched, and it is removed if the build fails. A folder
already at the target is replaced only when it holds the harness's own marker file
(what an earlier build wrote); anything else there is left alone and refused.
"""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from se_fairseq.core.files import temp_path
from se_fairseq.finetune.errors import FinetuneError


@contextmanager
def built_folder(path: str, marker: str) -> Iterator[str]:
    """Yields an empty scratch folder to build ``path`` in; the build must write
    ``marker`` (a file name) into it. On success the scratch folder becomes ``path``."""
    old_marker = os.path.join(path, marker)
    if os.path.lexists(path) and not os.path.isfile(old_marker):
        raise FinetuneError(
            f"{path} exists and was not written by se-finetune (no {marker} in it); "
            "move it away or use another --out folder"
        )
    scratch = temp_path(path)
    os.makedirs(scratch)
    try:
        yield scratch
        if not os.path.isfile(os.path.join(scratch, marker)):
            raise RuntimeError(f"{scratch}: built without its {marker}")
        if os.path.isfile(old_marker):  # an earlier build of other inputs: ours to replace
            shutil.rmtree(path)
        os.replace(scratch, path)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
