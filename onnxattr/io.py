"""Files: never over the input, never a half-written output, never a byte outside the model's folder.

Reading a model's external data: every tensor's `location` must be a relative path that stays
inside the model's folder once `..` and symbolic links are resolved, name an existing file, and
hold exactly the tensor's bytes; anything else is refused before a byte is read (compare the ONNX
advisories on external-data path traversal, CVE-2022-25882 and CVE-2024-27318).

Writing: to a temporary file in the output's folder, flushed, then renamed into place, so a
failure (a full disk, say) leaves neither a partial file nor a changed input. A model whose
tensors exceed what one protobuf can hold (2 GB), or whose source kept its weights in external
data, is written as OUT plus OUT.data (both through temporary files, renamed at the end).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path, PureWindowsPath
from typing import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ModelLoadError, OutputError
from .wire import read_model

EXTERNAL_MIN_BYTES = 1024  # tensors at least this large go to the .data file
SINGLE_FILE_LIMIT = 2**31 - 2**26  # tensor bytes above which one protobuf (2 GB at most) cannot hold the model


# ------------------------------------------------------------------------------------------ tensors
def iter_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every TensorProto of the model: initializers, sparse initializers, Constant-style
    attributes, in the main graph, its subgraphs and local functions."""

    def graph(g):
        yield from g.initializer
        for s in g.sparse_initializer:
            yield s.values
            yield s.indices
        for n in g.node:
            yield from node(n)

    def node(n):
        for a in n.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from graph(a.g)
            for sub in a.graphs:
                yield from graph(sub)

    yield from graph(model.graph)
    for f in model.functions:
        for n in f.node:
            yield from node(n)


def _expected_bytes(t: TensorProto) -> int | None:
    """The size of a tensor's raw data, from its dims and type (None where not fixed-size)."""
    count = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
    packed4 = {getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(TensorProto, n)}
    if t.data_type in packed4:
        return (count + 1) // 2
    if t.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return None
    try:
        return count * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None


def _tensor_label(t: TensorProto) -> str:
    return f"tensor '{t.name}'" if t.name else "an unnamed tensor"


def external_location(t: TensorProto, base: Path) -> tuple[Path, int, int | None]:
    """(file, offset, length) of an external tensor, checked to lie inside folder `base`.

    Raises ModelLoadError naming the tensor and its location for: no location, an absolute
    path, a `..` component, a path that resolves (through symbolic links) outside `base`, a
    missing file, or offsets that are not non-negative integers.
    """
    info = {e.key: e.value for e in t.external_data}
    loc = info.get("location", "")
    what = _tensor_label(t)
    if not loc:
        raise ModelLoadError(f"{what}: external data without a location")
    if "\0" in loc:
        raise ModelLoadError(f"{what}: external data location {loc!r} contains a NUL byte; refused")
    win = PureWindowsPath(loc)
    if os.path.isabs(loc) or loc.startswith(("/", "\\")) or win.is_absolute() or win.drive:
        raise ModelLoadError(f"{what}: external data location '{loc}' is an absolute path; refused "
                             f"(it must be relative to the model's folder)")
    if ".." in re.split(r"[\\/]", loc):
        raise ModelLoadError(f"{what}: external data location '{loc}' climbs out of the model's folder ('..'); refused")
    root = base.resolve()
    target = (root / loc).resolve()
    if root not in target.parents:
        raise ModelLoadError(f"{what}: external data location '{loc}' resolves to '{target}', outside the "
                             f"model's folder '{root}' (a symbolic link?); refused")
    if not target.is_file():
        why = "is not a regular file" if target.exists() else "does not exist"
        raise ModelLoadError(f"{what}: external data file '{loc}' {why} in '{root}'")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise ModelLoadError(f"{what}: external data offset/length of '{loc}' are not integers") from None
    if offset < 0 or (length is not None and length < 0):
        raise ModelLoadError(f"{what}: negative external data offset/length in '{loc}'")
    return target, offset, length


def load_external_data(model: onnx.ModelProto, base: Path) -> list[Path]:
    """Read every external tensor of `model` from files in folder `base` (checked first, all of
    them, by `external_location`); returns the files read."""
    tensors = [t for t in iter_tensors(model) if t.data_location == TensorProto.EXTERNAL]
    plan = []
    for t in tensors:
        path, offset, length = external_location(t, base)
        size = path.stat().st_size
        length = size - offset if length is None else length
        loc = dict((e.key, e.value) for e in t.external_data)["location"]
        if offset + length > size:
            raise ModelLoadError(f"{_tensor_label(t)}: external data '{loc}' has {size} bytes, the tensor needs "
                                 f"{length} at offset {offset} (truncated?)")
        want = _expected_bytes(t)
        if want is not None and length != want:
            raise ModelLoadError(f"{_tensor_label(t)}: external data '{loc}' holds {length} bytes, the tensor's "
                                 f"shape {list(t.dims)} needs {want}")
        plan.append((t, path, offset, length))
    for t, path, offset, length in plan:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(length)
        except OSError as e:
            raise ModelLoadError(f"{_tensor_label(t)}: cannot read external data '{path.name}': {e.strerror or e}") from None
        if len(data) != length:
            raise ModelLoadError(f"{_tensor_label(t)}: external data '{path.name}' ended early")
        t.raw_data = data
        del data
        t.data_location = TensorProto.DEFAULT
        del t.external_data[:]
    return sorted({p for _, p, _, _ in plan})


def external_data_files(path) -> list[Path]:
    """The (checked) external data files a model file refers to; [] for a self-contained one."""
    path = Path(os.fspath(path))
    try:
        proto = read_model(str(path))
    except Exception:
        return []
    files = set()
    for t in iter_tensors(proto):
        if t.data_location == TensorProto.EXTERNAL:
            try:
                files.add(external_location(t, path.parent)[0])
            except ModelLoadError:
                pass
    return sorted(files)


def _nbytes(t: TensorProto) -> int:
    """About the serialized size of a tensor, from its shape where it can (ByteSize() on a
    tensor of hundreds of MB takes seconds)."""
    if t.data_location == TensorProto.EXTERNAL:
        return 0
    n = _expected_bytes(t)
    return n if n is not None else t.ByteSize()


def tensor_bytes(model: onnx.ModelProto) -> int:
    """About the serialized size of the model's initializers (without copying them)."""
    return sum(_nbytes(t) for t in model.graph.initializer)


# ------------------------------------------------------------------------------------------ writing
def check_output_path(out, *inputs) -> Path:
    """`out` must be in an existing folder, not a folder itself, and not one of `inputs`."""
    out = Path(os.fspath(out))
    try:
        if not out.parent.resolve().is_dir():
            raise OutputError(f"output folder '{out.parent}' does not exist")
        if out.is_dir():
            raise OutputError(f"output '{out}' is a folder; give a file name")
        if out.exists() and not out.is_file():  # a device or FIFO would be replaced by a file
            raise OutputError(f"output '{out}' exists and is not a regular file; choose another -o")
        for src in inputs:
            if src is not None and Path(os.fspath(src)).exists() and out.exists() and os.path.samefile(out, src):
                raise OutputError(f"output '{out}' is the input file '{src}'; choose another -o")
    except OSError as e:  # a name too long, a loop of links, ...
        raise OutputError(f"output '{out}': {e.strerror or e}") from None
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_error(out: Path, e: OSError) -> OutputError:
    return OutputError(f"could not write '{out}': {e.strerror or e}; nothing was written")


def _temp(folder: Path, name: str) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{name[:64]}.", suffix=".tmp", dir=folder)  # any legal name fits
    os.close(fd)
    return tmp


def _atomic(out: Path, write) -> None:
    try:
        tmp = _temp(out.parent, out.name)
    except OSError as e:
        raise _write_error(out, e) from None
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except OSError as e:
        raise _write_error(out, e) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_model(model: onnx.ModelProto, out, source=None, external_data: bool | None = None, inputs=()) -> Path:
    """Write `model` to `out` through a temporary file renamed into place; never over `source`
    or the external data files it reads.

    `external_data`: True writes tensors of EXTERNAL_MIN_BYTES or more to OUT.data next to OUT;
    None (the default) does so when the source model has external data or the tensors are too
    large for one file. `model` itself is never changed. `inputs`: other files the run read (an
    integrated-gradients baseline), never written over either.
    """
    data_files = external_data_files(source) if source is not None else []
    sources = [source, *data_files, *inputs]
    out = check_output_path(out, *sources)
    if external_data is None:
        external_data = bool(data_files) or tensor_bytes(model) > SINGLE_FILE_LIMIT
    if not external_data:
        try:
            data = model.SerializeToString()
        except ValueError as e:  # over protobuf's 2 GB
            raise OutputError(f"cannot write '{out}' as one file ({e}); write it with external data") from None
        _atomic(out, lambda tmp: _write_bytes(tmp, data))
        return out
    data_path = out.with_name(out.name + ".data")
    check_output_path(data_path, *sources)
    _save_external(model, out, data_path)
    return out


def _copy_fields(src, dst, skip: str) -> None:
    """Copy every set field of message `src` into `dst` but `skip`."""
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        repeated = getattr(field, "is_repeated", None)
        if repeated is None:  # protobuf < 5
            repeated = field.label == field.LABEL_REPEATED
        if repeated:
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def _skeleton_with_external(model: onnx.ModelProto, f, location: str) -> onnx.ModelProto:
    """A copy of `model` whose large initializers point into `location`, their bytes written to
    the open file `f` one at a time (the weights are never copied all at once)."""
    skel = onnx.ModelProto()
    _copy_fields(model, skel, "graph")
    _copy_fields(model.graph, skel.graph, "initializer")
    offset = 0
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            raise OutputError(f"{_tensor_label(t)} refers to external data that was never loaded")
        if _nbytes(t) < EXTERNAL_MIN_BYTES or t.data_type == TensorProto.STRING:
            skel.graph.initializer.add().CopyFrom(t)
            continue
        data = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
        pad = -offset % 64  # aligned starts
        f.write(b"\0" * pad)
        offset += pad
        f.write(data)
        stub = skel.graph.initializer.add()
        stub.name, stub.data_type = t.name, t.data_type
        if t.HasField("doc_string"):
            stub.doc_string = t.doc_string
        stub.dims.extend(t.dims)
        stub.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(data)))):
            entry = stub.external_data.add()
            entry.key, entry.value = key, value
        offset += len(data)
        del data
    return skel


def _save_external(model: onnx.ModelProto, out: Path, data_path: Path) -> None:
    tmps = []
    try:
        tmp_data = _temp(out.parent, data_path.name)
        tmps.append(tmp_data)
        tmp_model = _temp(out.parent, out.name)
        tmps.append(tmp_model)
        with open(tmp_data, "wb") as f:
            skel = _skeleton_with_external(model, f, data_path.name)
            f.flush()
            os.fsync(f.fileno())
        try:
            _write_bytes(tmp_model, skel.SerializeToString())
        except ValueError as e:
            raise OutputError(f"cannot write '{out}': the graph without its weights is still too large ({e})") from None
        for tmp in tmps:
            os.chmod(tmp, 0o666 & ~_umask())
        kept = None  # an older OUT.data, set aside until the model is in place: a failure puts it back
        if data_path.exists():
            kept = _temp(out.parent, data_path.name)
            tmps.append(kept)
            os.replace(data_path, kept)
        os.replace(tmp_data, data_path)
        try:
            os.replace(tmp_model, out)
        except OSError:
            if kept is not None:
                os.replace(kept, data_path)
            else:
                data_path.unlink(missing_ok=True)
            raise
    except OSError as e:
        raise _write_error(out, e) from None
    finally:
        for tmp in tmps:
            if os.path.exists(tmp):
                os.unlink(tmp)


def save_array(array: np.ndarray, out, *sources) -> Path:
    """Write a .npy file atomically (never over one of `sources`)."""
    out = check_output_path(out, *sources)

    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())

    _atomic(out, write)
    return out
