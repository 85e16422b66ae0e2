"""Writing the converted files atomically: each appears whole or not at all (through
``se_fairseq.core.files``: a temporary name beside the target, fsync, rename; imported
when a file is written, so that se-convert --help loads no numpy)."""

import os
import shutil
import tempfile

from .errors import ConversionError


def tmp_path(path):
    """The scratch name a file is written under before it is moved into place."""
    from se_fairseq.core.files import temp_path

    return temp_path(path)


def unshared(state_dict):
    """Contiguous tensors that own their memory (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for key, t in state_dict.items():
        t = t.detach().contiguous()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def write_text(path, text):
    from se_fairseq.core.files import atomic_write_text

    return atomic_write_text(path, text)


def copy_file(src, dst):
    from se_fairseq.core.files import atomic_path

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def save_safetensors(state_dict, path):
    from safetensors.torch import save_file

    from se_fairseq.core.files import atomic_path

    with atomic_path(path) as tmp:
        save_file(unshared(state_dict), tmp, metadata={"format": "pt"})
    return path


def save_pretrained_files(obj, out_dir):
    """``obj.save_pretrained`` (a config or tokenizer) into ``out_dir`` without leaving
    half-written files: into a scratch folder beside it, then each file moved in."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    with tempfile.TemporaryDirectory(dir=parent, prefix=".se-convert-") as scratch:
        obj.save_pretrained(scratch)
        names = sorted(os.listdir(scratch))
        for name in names:
            os.replace(os.path.join(scratch, name), os.path.join(out_dir, name))
    return [os.path.join(out_dir, name) for name in names]


def save_checkpoint(checkpoint, out):
    """torch.save to ``out`` (atomically), then re-read what the file would unpickle:
    anything beyond the checkpoint allow-list removes the file and is an error."""
    import torch

    from se_fairseq.checkpoint_safety import allowed_globals
    from se_fairseq.core.files import atomic_path

    with atomic_path(out) as tmp:
        torch.save(checkpoint, tmp)
        found, aliases = allowed_globals()
        allowed = {f"{g.__module__}.{g.__qualname__}" for g in found} | {n for _, n in aliases}
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(tmp)) - allowed
        if unsafe:  # cannot happen with plain containers; never leave such a file behind
            raise ConversionError(f"internal error: the checkpoint would pickle {sorted(unsafe)}")
    return out
