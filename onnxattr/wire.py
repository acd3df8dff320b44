"""Reading a model file without holding its bytes and the parsed model at once.

`onnx.load` reads the whole file into memory and then parses it, so its peak is twice the model.
Here the file is memory-mapped and parsed one top-level field at a time, descending into the
graph: each field's bytes are merged into the ModelProto (protobuf's merge of fields in order is
its parse of their concatenation) and their pages are dropped right after, so the peak is the
parsed model plus its largest single field (one initializer, say).
"""

from __future__ import annotations

import mmap
import os

import onnx

GRAPH = 7  # ModelProto.graph
PAGE = mmap.PAGESIZE


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError(f"truncated or malformed varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _field_end(buf, pos: int, end: int, wire_type: int) -> int:
    """The end of a field whose value starts at `pos`."""
    if wire_type == 0:
        return _varint(buf, pos, end)[1]
    if wire_type == 1:
        nxt = pos + 8
    elif wire_type == 2:
        length, pos = _varint(buf, pos, end)
        nxt = pos + length
    elif wire_type == 5:
        nxt = pos + 4
    else:
        raise ValueError(f"unsupported wire type {wire_type} at byte {pos}")
    if nxt > end:
        raise ValueError(f"field runs past its message (byte {pos}, {nxt - end} bytes short)")
    return nxt


def _merge_fields(buf, start: int, end: int, message, descend: dict, drop) -> None:
    """Merge the fields in buf[start:end] into `message`, one at a time; fields whose number is in
    `descend` are walked the same way into the sub-message `descend[number](message)`."""
    pos = start
    while pos < end:
        key, value = _varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ValueError(f"field number 0 at byte {pos}")
        stop = _field_end(buf, value, end, wire_type)
        if number in descend and wire_type == 2:
            length, inner = _varint(buf, value, end)
            _merge_fields(buf, inner, inner + length, descend[number](message), {}, drop)
        else:
            message.MergeFromString(buf[pos:stop])
            drop(pos, stop)
        pos = stop


def read_model(path: str) -> onnx.ModelProto:
    """The ModelProto in file `path` (external data not loaded), as `onnx.load` would parse it.
    Raises ValueError or protobuf's DecodeError for bytes that are not a protobuf message."""
    model = onnx.ModelProto()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return model
        try:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # not mappable here: a plain read, as onnx.load does
            return onnx.load_model_from_string(f.read())
        with mapped as buf:
            def drop(a: int, b: int) -> None:  # release whole pages already merged
                lo, hi = -(-a // PAGE) * PAGE, (b // PAGE) * PAGE
                if hi > lo and hasattr(buf, "madvise"):
                    buf.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

            _merge_fields(buf, 0, size, model, {GRAPH: lambda m: m.graph}, drop)
    return model

