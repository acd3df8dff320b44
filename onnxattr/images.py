"""Reading images from disk into a normalised model input batch (Pillow + numpy)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from .errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")
LAYOUTS = ("NCHW", "NHWC")


def expand_paths(args: Sequence[str | os.PathLike], skip=None) -> list[Path]:
    """Files as given, folders as their image files (sorted, not recursive, no hidden files, none
    for which `skip(path)` is true).

    Raises InputError for a path that does not exist, or when no image is found at all.
    """
    found: list[Path] = []
    for arg in args:
        path = Path(os.fspath(arg))
        if path.is_dir():
            found.extend(p for p in _folder_images(path) if skip is None or not skip(p))
        elif path.is_file():
            found.append(path)
        elif path.exists():  # a FIFO or device: reading it could block forever
            raise InputError(f"'{path}' is not a regular file or a folder")
        else:
            raise InputError(f"no such file or folder '{path}'")
    if not found:
        names = ", ".join(f"'{a}'" for a in args) or "(nothing given)"
        raise InputError(f"no images found in {names} (looked for {', '.join(IMAGE_SUFFIXES)})")
    unique: dict = {}  # a file given twice (by name and in its folder) is explained once
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _dim(d) -> int | None:
    """A static dimension as an int, or None when symbolic/unknown."""
    if isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0:
        return int(d)
    return None


def layout_of(shape: Sequence) -> str:
    """"NCHW" or "NHWC" for a rank-4 image input shape; dims may be int, str or None.

    The channel dim is whichever of dims 1 and 3 equals 1 or 3 (NCHW when both do).
    """
    if shape is None or len(shape) != 4:
        raise InputError(f"model input shape {_show(shape)} is not a rank-4 image input (NCHW or NHWC)")
    if _dim(shape[1]) in (1, 3):
        return "NCHW"
    if _dim(shape[3]) in (1, 3):
        return "NHWC"
    raise InputError(f"model input shape {_show(shape)} has no channel dim of size 1 or 3 at position 1 or 3")


def input_geometry(shape: Sequence) -> tuple[str, int, tuple[int | None, int | None]]:
    """(layout, channels, (H, W)) of a rank-4 image input; H/W are None when not static."""
    layout = layout_of(shape)
    if layout == "NCHW":
        return layout, _dim(shape[1]), (_dim(shape[2]), _dim(shape[3]))
    return layout, _dim(shape[3]), (_dim(shape[1]), _dim(shape[2]))


def _show(shape) -> str:
    return "None" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def load_images(paths: Sequence[str | os.PathLike], size: tuple[int, int], mean, std, layout: str,
                resize: int | None = None, channels: int = 3) -> tuple[np.ndarray, list[np.ndarray]]:
    """Read, resize, center-crop and normalise images into one float32 batch.

    torchvision's Resize(n) (bilinear: the shorter side to n, the longer in proportion rounded
    down) + CenterCrop(size), size = (H, W), where n is `resize`, or by default (or where `resize`
    would not cover the crop) the smallest n that covers it; then scaled to [0, 1] and normalised
    as (x - mean) / std per channel. `channels` is 3 (RGB) or 1 (grayscale, "L").
    Returns (batch in `layout`, display images: uint8 H x W x 3 crops before normalisation).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    mean_v, std_v = _per_channel(mean, channels, "mean"), _per_channel(std, channels, "std")
    rows, shown = [], []
    for path in paths:
        crop = _crop(_read(Path(os.fspath(path))), size, resize, path)
        pixels = np.asarray(crop.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
        pixels = pixels.reshape(size[0], size[1], channels)
        rows.append((pixels.astype(np.float32) / np.float32(255.0) - mean_v) / std_v)
        shown.append(np.asarray(crop.convert("RGB"), dtype=np.uint8))
    batch = np.stack(rows).astype(np.float32, copy=False)
    if layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch), shown


def _per_channel(values, channels: int, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32).reshape(-1)
    if v.size == 1:
        v = np.repeat(v, channels)
    if v.size != channels:
        raise InputError(f"{name} has {v.size} values but the model input has {channels} channel(s); give --mean and "
                         f"--std with {channels} value(s) (or one for all channels)")
    if not np.all(np.isfinite(v)):
        raise InputError(f"{name} must be finite numbers, not {values}")
    if name == "std" and np.any(v <= 0):
        raise InputError(f"std must be positive, not {values}")
    return v


def _read(path: Path) -> Image.Image:
    """Decode fully, apply EXIF orientation, flatten transparency onto white; RGB or L."""
    try:
        with Image.open(path) as im:
            im.load()
            im = _to_8bit(ImageOps.exif_transpose(im))
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                rgba = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"cannot decode image '{path}': {reason}") from None


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit ("I;16*", "I") and float ("F") grayscale as 8-bit "L" (Pillow would clip, not scale)."""
    if im.mode.startswith("I"):
        return Image.fromarray(np.rint(np.asarray(im, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8))
    if im.mode == "F":
        return Image.fromarray(np.rint(np.asarray(im, dtype=np.float64)).clip(0, 255).astype(np.uint8))
    return im


def _resized(iw: int, ih: int, n: int) -> tuple[int, int]:
    """(width, height) after torchvision's Resize(n): the shorter side n, the longer
    int(n * long / short) (rounded towards zero)."""
    return (n, int(n * ih / iw)) if iw <= ih else (int(n * iw / ih), n)


def _covering(iw: int, ih: int, w: int, h: int) -> int:
    """The smallest n whose Resize(n) covers a (H, W) = (h, w) crop."""
    short, long_, need_short, need_long = (iw, ih, w, h) if iw <= ih else (ih, iw, h, w)
    n = max(need_short, math.ceil(need_long * short / long_))
    while int(n * long_ / short) < need_long:  # (float rounding of the bound)
        n += 1
    return n


def _crop(im: Image.Image, size: tuple[int, int], resize: int | None, path: str | os.PathLike) -> Image.Image:
    """torchvision's Resize(n) (bilinear) + CenterCrop(size), size = (H, W): n is `resize`, or
    the smallest n that covers the crop where `resize` is None or would not."""
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive (H, W), got {size!r}")
    iw, ih = im.size
    least = _covering(iw, ih, w, h)
    n = max(least, resize or 0)
    nw, nh = _resized(iw, ih, n)
    limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None
    if limit and nw * nh > limit:
        # (Pillow's own decompression-bomb limit: --resize 100000 took 23 GB before the crop; a 1 x 20000
        # line enlarged to cover a 224 crop 4.5 GB). --resize is to blame only where a smaller one would do.
        cw, ch = _resized(iw, ih, least)
        if n != least and cw * ch <= limit:
            raise InputError(f"--resize {resize} makes a {iw}x{ih} image ('{path}') {nw}x{nh} pixels before the crop, "
                             f"over Pillow's limit of {limit}; give a smaller --resize")
        raise InputError(f"image '{path}' ({iw}x{ih}) would be resized to {cw}x{ch} pixels to cover the {w}x{h} crop, "
                         f"over Pillow's limit of {limit}; crop it to a less extreme aspect first")
    if (nw, nh) != (iw, ih):
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = int(round((nw - w) / 2.0)), int(round((nh - h) / 2.0))  # (CenterCrop's offsets)
    return im.crop((left, top, left + w, top + h))
