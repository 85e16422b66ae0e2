"""Files the package writes: each appears whole or not at all, and nothing else is touched.

One way to write: under ``<path>.tmp-<pid>`` beside the target, flushed and fsynced, then
renamed over it (``os.replace``, atomic on one file system). A failure removes the
temporary file and leaves the target as it was.
"""

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import numpy as np


def temp_path(path: str) -> str:
    """The scratch name ``path`` is written under before it is moved into place."""
    return f"{path}.tmp-{os.getpid()}"


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields the temporary path to write ``path``'s content to (for writers that take a
    path: torch.save, safetensors, shutil.copyfile); on success it is fsynced and renamed
    to ``path``, on failure removed."""
    tmp = temp_path(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


@contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[IO[Any]]:
    """``open(path, mode)`` for writing, atomically (text modes write UTF-8)."""
    if "w" not in mode:
        raise ValueError(f"atomic_open writes a new file: mode must contain 'w', not {mode!r}")
    encoding = None if "b" in mode else "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as f:
        yield f
        f.flush()


def atomic_write_text(path: str, text: str) -> str:
    with atomic_open(path, "w") as f:
        f.write(text)
    return path


def atomic_write_json(path: str, value: Any) -> str:
    """``value`` as indented JSON with sorted keys and a final newline."""
    return atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def atomic_save_npy(path: str, array: np.ndarray) -> str:
    """``array`` as a plain .npy file (no pickle)."""
    with atomic_open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
    return path


def file_sha256(path: str, block: int = 1 << 22) -> str:
    """The sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(block), b""):
            digest.update(piece)
    return digest.hexdigest()
