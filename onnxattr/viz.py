"""Attribution pictures: maps, colormaps, overlays and a labelled grid (Pillow + numpy only)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .io import _atomic, check_output_path

KINDS = ("gradient", "signed", "cam")

# matplotlib's 'inferno' sampled at 0, 0.1, ..., 1 (perceptually uniform, black -> yellow).
_INFERNO = ["000004", "160b39", "420a68", "6a176e", "932667", "bc3754",
            "dd513a", "f37819", "fca50a", "f6d746", "fcffa4"]
# Diverging blue-white-red (ColorBrewer RdBu, reversed) for -1 .. 1.
_BWR = ["2166ac", "67a9cf", "d1e5f0", "ffffff", "fddbc7", "ef8a62", "b2182b"]


def _lut(stops: Sequence[str], n: int = 256) -> np.ndarray:
    """An n x 3 uint8 table interpolating the hex colour stops linearly."""
    rgb = np.array([[int(s[i:i + 2], 16) for i in (0, 2, 4)] for s in stops], dtype=np.float64)
    x = np.linspace(0.0, 1.0, len(stops))
    t = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(t, x, rgb[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


SEQUENTIAL_LUT = _lut(_INFERNO)
DIVERGING_LUT = _lut(_BWR, 255)  # odd length: 0 maps exactly to the white centre


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _channel_axis(row: np.ndarray, layout: str) -> int:
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return 0 if layout == "NCHW" else 2


def _squeeze_row(row) -> np.ndarray:
    a = np.nan_to_num(np.asarray(row, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim not in (2, 3):
        raise ValueError(f"expected one attribution row (C,H,W), (H,W,C) or (H,W); got shape {a.shape}")
    return a


def _scale(values: np.ndarray, ref: float, fallback: float) -> np.ndarray:
    """Divide by `ref` (or `fallback` when ref is 0); all-zero input stays all-zero."""
    ref = ref if ref > 0 else fallback
    return values / ref if ref > 0 else np.zeros_like(values)


def to_map(attribution_row: np.ndarray, kind: str, layout: str) -> np.ndarray:
    """One sample's attribution as a 2-D float map at its own spatial size.

    "gradient": |a| max over channels, / 99th percentile, clipped to [0, 1].
    "signed":   sum over channels, / 99th percentile of |.|, clipped to [-1, 1].
    "cam":      a 1-channel (or 2-D) non-negative map, / its max, in [0, 1].
    NaN/inf become 0; an all-zero attribution gives an all-zero map.
    """
    _check_kind(kind)
    a = _squeeze_row(attribution_row)
    axis = _channel_axis(a, layout)
    if kind == "cam":
        if a.ndim == 3:
            if a.shape[axis] != 1:
                raise ValueError(f"a cam attribution must have 1 channel; got shape {a.shape} ({layout})")
            a = a.squeeze(axis)
        a = np.maximum(a, 0.0)
        return np.clip(_scale(a, float(a.max()), 0.0), 0.0, 1.0).astype(np.float32)
    if a.ndim == 2:
        a = a[None] if axis == 0 else a[..., None]
    if kind == "gradient":
        m = np.abs(a).max(axis=axis)
        return np.clip(_scale(m, float(np.percentile(m, 99)), float(m.max())), 0.0, 1.0).astype(np.float32)
    s = a.sum(axis=axis)
    mag = np.abs(s)
    return np.clip(_scale(s, float(np.percentile(mag, 99)), float(mag.max())), -1.0, 1.0).astype(np.float32)


def colorize(map2d: np.ndarray, kind: str) -> np.ndarray:
    """uint8 H x W x 3: 'inferno' for [0, 1] maps, blue-white-red for "signed" [-1, 1] maps."""
    _check_kind(kind)
    m = np.nan_to_num(np.asarray(map2d, dtype=np.float64))
    if kind == "signed":
        idx = (np.clip(m, -1.0, 1.0) + 1.0) * 127.0
        lut = DIVERGING_LUT
    else:
        idx = np.clip(m, 0.0, 1.0) * 255.0
        lut = SEQUENTIAL_LUT
    return lut[np.rint(idx).astype(np.intp)]


def resize_map(map2d: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a 2-D float map to (height, width)."""
    m = np.ascontiguousarray(map2d, dtype=np.float32)
    if m.shape == (height, width):
        return m
    return np.asarray(Image.fromarray(m).resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (1, 3):
        raise ValueError(f"expected an H x W x 3 image, got shape {img.shape}")
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def overlay(image_uint8: np.ndarray, map2d: np.ndarray, kind: str, alpha: float = 0.5) -> np.ndarray:
    """Blend the colorized map over the image (map resized bilinearly to the image size).

    For "gradient"/"cam" each pixel's colour weight is alpha * map value, so areas with low
    attribution show the image; for "signed" the weight is alpha everywhere (0 is white).
    """
    _check_kind(kind)
    img = _as_rgb(image_uint8).astype(np.float32)
    lo = -1.0 if kind == "signed" else 0.0
    m = np.clip(resize_map(map2d, img.shape[0], img.shape[1]), lo, 1.0)
    colour = colorize(m, kind).astype(np.float32)
    weight = np.full(m.shape, alpha, np.float32) if kind == "signed" else alpha * m
    out = img * (1.0 - weight[..., None]) + colour * weight[..., None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def save_png(array_uint8, path) -> os.PathLike:
    """Write an H x W x 3 uint8 array (or a PIL image) as PNG via a temp file + os.replace."""
    out = check_output_path(path)
    im = array_uint8 if isinstance(array_uint8, Image.Image) else Image.fromarray(np.asarray(array_uint8, np.uint8))
    _atomic(out, lambda tmp: im.save(tmp, format="PNG"))
    return out


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, AttributeError, ImportError, OSError):
        return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return right - left, bottom - top


def grid(images: list[np.ndarray], columns: list[tuple[str, list[np.ndarray]]], row_titles: list[str],
         cell: int | None = None, font_size: int = 14) -> Image.Image:
    """A labelled table: one row per image (the image, then one panel per method column).

    `columns` is [(method name, [panel for each image])]; `row_titles` label the rows
    (e.g. "circle (0.98)"). Panels are scaled so their longer side is `cell` pixels
    (default: the largest input side, at least 128). White background, black text.
    """
    n = len(images)
    if len(row_titles) != n or any(len(panels) != n for _, panels in columns):
        raise ValueError("grid needs one row title and one panel per column for every image")
    font, margin, gap = _font(font_size), 10, 6
    if cell is None:
        cell = max([128] + [max(np.asarray(im).shape[:2]) for im in images])
    heads = ["input"] + [name for name, _ in columns]
    text_h = max(_text_size(font, t + "Ag")[1] for t in heads + list(row_titles) + ["Ag"])
    col_w = max([cell] + [_text_size(font, t)[0] for t in heads])
    row_w = margin * 2 + len(heads) * col_w + (len(heads) - 1) * gap
    width = max([row_w] + [margin * 2 + _text_size(font, t)[0] for t in row_titles])
    row_h = text_h + gap + cell
    height = margin + text_h + gap + n * (row_h + margin)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, head in enumerate(heads):
        x = margin + j * (col_w + gap) + (col_w - _text_size(font, head)[0]) // 2
        draw.text((x, margin), head, fill="black", font=font)
    for i in range(n):
        y = margin + text_h + gap + i * (row_h + margin)
        draw.text((margin, y), row_titles[i], fill="black", font=font)
        panels = [images[i]] + [panels[i] for _, panels in columns]
        for j, panel in enumerate(panels):
            tile = _fit(panel, cell)
            x = margin + j * (col_w + gap) + (col_w - tile.width) // 2
            canvas.paste(tile, (x, y + text_h + gap + (cell - tile.height) // 2))
    return canvas


def _fit(panel: np.ndarray, cell: int) -> Image.Image:
    """The panel as an RGB image whose longer side is `cell` (aspect kept)."""
    im = Image.fromarray(_as_rgb(np.asarray(panel, dtype=np.uint8)))
    scale = cell / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    if size == im.size:
        return im
    return im.resize(size, Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.NEAREST)
