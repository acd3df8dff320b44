"""Writing files safely: never over the input, never a half-written output."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from .errors import OnnxAttrError


def check_output_path(out, *inputs) -> Path:
    """`out` must be in an existing folder and must not be one of `inputs`."""
    out = Path(os.fspath(out))
    if not out.parent.resolve().is_dir():
        raise OnnxAttrError(f"output folder '{out.parent}' does not exist")
    for src in inputs:
        if src is not None and Path(os.fspath(src)).exists() and out.exists() and os.path.samefile(out, src):
            raise OnnxAttrError(f"output '{out}' is the input file; choose another -o")
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(out: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except OSError as e:
        raise OnnxAttrError(f"could not write '{out}': {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_model(model: onnx.ModelProto, out, source=None) -> Path:
    """Write `model` to `out` through a temporary file renamed into place."""
    out = check_output_path(out, source)
    data = model.SerializeToString()

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    _atomic(out, write)
    return out


def save_array(array: np.ndarray, out, *sources) -> Path:
    out = check_output_path(out, *sources)

    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array)

    _atomic(out, write)
    return out
