"""Image tensors: value ranges, 8-bit quantisation, resizing, reading and writing image files.

genprov's images are float32 tensors of shape (N, C, H, W) with values in [-1, 1]; C is 1 (grayscale) or
3 (RGB). The functions here convert between that convention and 8-bit pixels (uint8 0..255) exactly the
way a PNG file stores them, so ``png_roundtrip(x)`` equals saving ``x`` with :func:`save_images` and
reading it back with :func:`load_image`.

Example:
    >>> import torch
    >>> x = torch.rand(4, 3, 8, 8) * 2 - 1
    >>> bool((png_roundtrip(png_roundtrip(x)) == png_roundtrip(x)).all())
    True
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from genprov.exceptions import ConfigError, DataError
from genprov.utils.io import atomic_write_bytes
from genprov.utils.validation import check_images

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_DECODED_PIXELS",
    "decode_image",
    "expand_image_paths",
    "image_to_tensor",
    "load_image",
    "load_images",
    "make_grid",
    "png_roundtrip",
    "resize_images",
    "save_image_grid",
    "save_images",
    "to_model_range",
    "to_uint8",
]

#: File name suffixes read as images (lower case); other files in an image folder are ignored.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

PathLike = str | os.PathLike[str]


def uint8_to_model(x: Tensor) -> Tensor:
    """Map 8-bit pixel values (any integer dtype, 0..255) to float32 in [-1, 1]: ``v / 127.5 - 1``."""
    return x.to(torch.float32).div_(127.5).sub_(1.0)


def to_model_range(x: Tensor | np.ndarray) -> Tensor:
    """Convert images to genprov's float32 [-1, 1] range, keeping the shape.

    Args:
        x: Images of any shape, either integer pixel values 0..255 (uint8 or another integer dtype) or
            floats in [0, 1].

    Returns:
        A float32 tensor of the same shape with values in [-1, 1].

    Raises:
        DataError: If integer values fall outside 0..255 or float values outside [0, 1] (images that are
            already in [-1, 1] need no conversion).
    """
    t = torch.as_tensor(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if t.dtype == torch.bool:
        raise DataError("to_model_range expects uint8 pixels 0..255 or floats in [0, 1]; got a bool tensor.")
    if not t.is_floating_point():
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > 255):
            raise DataError(
                f"to_model_range expects integer pixels in 0..255; got values in [{int(t.min())}, {int(t.max())}]."
            )
        return uint8_to_model(t)
    if t.numel():
        lo, hi = float(t.min()), float(t.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise DataError("to_model_range got NaN or infinite values; clean the images first.")
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"to_model_range expects float images in [0, 1]; got values in [{lo:.4g}, {hi:.4g}]. "
                "Images already in [-1, 1] need no conversion; 0..255 pixels should be a uint8 array."
            )
    return t.to(torch.float32) * 2.0 - 1.0


def _quantise(x: Tensor) -> Tensor:
    """8-bit codes (float tensor holding integers 0..255) of images in [-1, 1], rounding to nearest."""
    return ((x.detach().to(torch.float32).clamp(-1.0, 1.0) + 1.0) * 127.5).round_()


def to_uint8(x: Tensor) -> np.ndarray:
    """Quantise images in [-1, 1] to 8-bit pixels in channels-last order.

    Args:
        x: (N, C, H, W) or (C, H, W) float images in [-1, 1]; values outside are clipped.

    Returns:
        (N, H, W, C) or (H, W, C) uint8 array, ``round((x + 1) * 127.5)``.
    """
    if x.ndim not in (3, 4):
        raise DataError(f"to_uint8 expects images of shape (N, C, H, W) or (C, H, W); got {tuple(x.shape)}.")
    codes = _quantise(x).to(torch.uint8).cpu()
    return codes.movedim(-3, -1).contiguous().numpy()


def png_roundtrip(x: Tensor) -> Tensor:
    """Quantise images to 8 bits exactly as saving to PNG and loading back would.

    Args:
        x: Float images in [-1, 1], any shape (typically (N, C, H, W)).

    Returns:
        A float32 tensor of the same shape and device; idempotent (``png_roundtrip(png_roundtrip(x))``
        equals ``png_roundtrip(x)``).
    """
    return _quantise(x).div_(127.5).sub_(1.0)


def resize_images(x: Tensor, size: int) -> Tensor:
    """Resize images to ``size`` x ``size``; non-square images are first centre-cropped to a square.

    Downsampling uses area averaging (no aliasing), upsampling bilinear interpolation; both keep values
    inside the input's range.

    Args:
        x: (N, C, H, W) float images.
        size: Output height and width in pixels.

    Returns:
        (N, C, size, size) float tensor (``x`` itself when it already has that size).
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"resize must be a positive integer (pixels); got {size!r}.")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h != w:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[..., top : top + side, left : left + side]
        h = w = side
    if h == size:
        return x.contiguous()
    x = x.to(torch.float32)
    if size < h:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


ImageSource = PathLike | bytes
"""An image file path, or encoded image bytes (PNG/JPEG/WebP...)."""


def _decode(source: ImageSource, name: str, *, header_only: bool = False) -> Image.Image:
    """Open an image (a path or encoded bytes) and decode it fully unless ``header_only``.

    ``name`` is how error messages refer to the image. With ``header_only`` the file is closed again at
    once and only ``size`` and ``mode`` of the returned image are meaningful.
    """
    stream: PathLike | BinaryIO = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        image = Image.open(stream)
        if header_only:
            image.close()
        else:
            image.load()
    except UnidentifiedImageError:
        raise DataError(
            f"{name} is not an image Pillow can read (PNG, JPEG, WebP, ...); convert it to PNG or JPEG."
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"Cannot read image {name}: {err}. The data is probably truncated or corrupt.") from None
    return image


def read_pil_image(path: Path) -> Image.Image:
    """Decode the image file ``path``; a missing or unreadable file raises :class:`DataError`."""
    if not path.is_file():
        raise DataError(f"Image file {path} does not exist.")
    return _decode(path, str(path))


def _image_channels(image: Image.Image) -> int:
    return 1 if image.mode in _GRAY_MODES else 3


def _to_tensor(image: Image.Image, channels: int) -> Tensor:
    """(C, H, W) float32 tensor in [-1, 1] from a decoded Pillow image."""
    if image.mode.startswith("I;16"):
        arr16 = np.asarray(image, dtype=np.float32) / 65535.0
        gray = torch.from_numpy(arr16)[None] * 2.0 - 1.0
        return gray.expand(channels, -1, -1).contiguous()
    arr = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    t = torch.from_numpy(arr.copy())
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    return uint8_to_model(t.contiguous())


def _check_channels(channels: int | None) -> None:
    if channels is not None and channels not in (1, 3):
        raise ConfigError(f"channels must be 1 (grayscale), 3 (RGB) or None (as stored); got {channels!r}.")


def expand_image_paths(paths: Sequence[PathLike]) -> list[Path]:
    """Expand image files and folders (their image files, sorted, not recursive) into a list of files.

    Args:
        paths: Image files and folders of images.

    Returns:
        The image files, in the order given (each folder's files sorted by name).

    Raises:
        DataError: A path does not exist, a folder holds no images, or nothing was given.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not found:
                raise DataError(f"{path} holds no image files ({', '.join(IMAGE_EXTENSIONS)}).")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path} does not exist; pass image files or folders of images.")
    if not files:
        raise DataError("No images given; pass image files or folders, e.g. 'suspect/*.png'.")
    return files


#: Largest image (in pixels) :func:`decode_image` accepts: a guard against decompression bombs.
MAX_DECODED_PIXELS = 4096 * 4096


def decode_image(data: bytes, *, name: str = "the upload", max_pixels: int = MAX_DECODED_PIXELS) -> Image.Image:
    """Decode encoded image bytes (PNG, JPEG, WebP, ...) that came from outside, e.g. an upload.

    Args:
        data: The file's bytes.
        name: How error messages refer to the image.
        max_pixels: Refuse larger images (checked from the header, before decoding).

    Returns:
        The decoded Pillow image; turn it into a tensor with :func:`image_to_tensor`.

    Raises:
        DataError: Empty data, not an image, truncated or corrupt, or too large.
    """
    if not data:
        raise DataError(f"{name} is empty (0 bytes); send a PNG or JPEG file.")
    header = _decode(data, name, header_only=True)
    width, height = header.size
    if width * height > max_pixels:
        raise DataError(
            f"{name} is {width}x{height} pixels, more than the {max_pixels:,} allowed; send a smaller image."
        )
    return _decode(data, name)


def image_to_tensor(image: Image.Image, *, size: int | None = None, channels: int | None = None) -> Tensor:
    """A decoded Pillow image as a (C, H, W) float32 tensor in [-1, 1].

    Args:
        image: The image (any mode Pillow converts to L or RGB; 16-bit grayscale is kept at full depth).
        size: If given, resize (centre-crop non-square images first) to ``size`` x ``size``.
        channels: 1 (grayscale, by luminance) or 3 (RGB, grayscale replicated); ``None`` keeps the image's own.
    """
    _check_channels(channels)
    x = _to_tensor(image, channels or _image_channels(image))
    return resize_images(x[None], size)[0] if size is not None else x


def load_image(path: PathLike, *, size: int | None = None, channels: int | None = None) -> Tensor:
    """Read one image file as a float tensor.

    Args:
        path: A PNG, JPEG or other file Pillow reads.
        size: If given, resize (centre-crop non-square images first) to ``size`` x ``size``.
        channels: 1 (grayscale) or 3 (RGB); ``None`` keeps the file's own (grayscale files give 1, colour
            files 3; an alpha channel is dropped).

    Returns:
        (C, H, W) float32 tensor in [-1, 1].

    Raises:
        DataError: If the file is missing, not an image, or truncated.
    """
    _check_channels(channels)
    return image_to_tensor(read_pil_image(Path(path)), size=size, channels=channels)


def load_images(paths: Sequence[PathLike], *, size: int | None = None, channels: int | None = None) -> Tensor:
    """Read several image files into one batch.

    Args:
        paths: Image files.
        size: If given, resize every image to ``size`` x ``size``; required when the files differ in size.
        channels: 1 or 3; ``None`` gives 1 when every file is grayscale and 3 otherwise.

    Returns:
        (N, C, H, W) float32 tensor in [-1, 1].

    Raises:
        DataError: If ``paths`` is empty, a file is unreadable, or sizes differ and ``size`` is ``None``
            (the message names the first file whose size differs).
    """
    files = [Path(p) for p in paths]
    if not files:
        raise DataError("load_images got no paths; pass at least one image file.")
    for path in files:
        if not path.is_file():
            raise DataError(f"Image file {path} does not exist.")
    return stack_images([(str(p), p) for p in files], size=size, channels=channels)


def stack_images(
    sources: Sequence[tuple[str, ImageSource]], *, size: int | None = None, channels: int | None = None
) -> Tensor:
    """Decode images (paths or encoded bytes) into one batch (see :func:`load_images`).

    Headers are read first (size and mode, to pick C and check sizes), then each image is decoded and
    written into the output, so only one decoded image is held at a time.

    Args:
        sources: ``(name, path or bytes)`` pairs; names appear in error messages.
        size: Resize every image to ``size`` x ``size``; required when sizes differ.
        channels: 1, 3, or ``None`` (1 when every image is grayscale, else 3).

    Returns:
        (N, C, H, W) float32 tensor in [-1, 1].
    """
    _check_channels(channels)
    if not sources:
        raise DataError("No images to stack; pass at least one image.")
    headers = [_decode(source, name, header_only=True) for name, source in sources]
    if channels is None:
        channels = 1 if all(_image_channels(im) == 1 for im in headers) else 3
    width, height = headers[0].size
    if size is None:
        for (name, _), header in zip(sources, headers, strict=True):
            if header.size != (width, height):
                raise DataError(
                    f"Images differ in size: {sources[0][0]} is {width}x{height} but {name} is "
                    f"{header.size[0]}x{header.size[1]} (width x height). Pass a size (--resize N) to resize them all."
                )
    out = torch.empty((len(sources), channels, size or height, size or width), dtype=torch.float32)
    for k, (name, source) in enumerate(sources):
        image = _to_tensor(_decode(source, name), channels)
        out[k] = resize_images(image[None], size)[0] if size is not None else image
    return out


def make_grid(images: Tensor, *, nrow: int | None = None, padding: int = 1, pad_value: float = 1.0) -> Tensor:
    """Tile images into one image, row by row.

    Args:
        images: (N, C, H, W) or (C, H, W) float images in [-1, 1].
        nrow: Images per row; default ``ceil(sqrt(N))``.
        padding: Pixels between images and around the border.
        pad_value: Value of the padding pixels (1.0 = white, -1.0 = black).

    Returns:
        (C, rows * (H + padding) + padding, nrow * (W + padding) + padding) float tensor.
    """
    if images.ndim == 3:
        images = images[None]
    check_images(images, "images", value_range=None)
    n, c, h, w = images.shape
    if n == 0:
        raise DataError("make_grid got an empty batch; pass at least one image.")
    if nrow is None:
        nrow = math.ceil(math.sqrt(n))
    if nrow < 1 or padding < 0:
        raise ConfigError(f"nrow must be >= 1 and padding >= 0; got nrow={nrow}, padding={padding}.")
    nrow = min(nrow, n)
    rows = math.ceil(n / nrow)
    grid = torch.full(
        (c, rows * (h + padding) + padding, nrow * (w + padding) + padding), float(pad_value), dtype=torch.float32
    )
    for k in range(n):
        top = padding + (k // nrow) * (h + padding)
        left = padding + (k % nrow) * (w + padding)
        grid[:, top : top + h, left : left + w] = images[k].detach().to(torch.float32).cpu()
    return grid


def _png_bytes(image: Tensor) -> bytes:
    """PNG-encode one (C, H, W) image in [-1, 1] (mode L for C=1, RGB for C=3)."""
    if image.shape[0] not in (1, 3):
        raise DataError(f"Images must have 1 or 3 channels to be saved as PNG; got shape {tuple(image.shape)}.")
    arr = to_uint8(image)
    pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr, mode="L" if arr.shape[-1] == 1 else "RGB")
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def save_image_grid(
    images: Tensor,
    path: PathLike,
    *,
    nrow: int | None = None,
    padding: int = 1,
    scale: int = 1,
    pad_value: float = 1.0,
) -> Path:
    """Save a batch as one PNG grid (written atomically).

    Args:
        images: (N, C, H, W) or (C, H, W) float images in [-1, 1], C in {1, 3}.
        path: Destination file (PNG format whatever the suffix; parent folders are created).
        nrow: Images per row; default ``ceil(sqrt(N))``.
        padding: Pixels between images (before scaling).
        scale: Integer nearest-neighbour upscaling factor (e.g. 4 for 8x8 digits).
        pad_value: Value of the padding pixels (1.0 = white).

    Returns:
        The path written.
    """
    if not isinstance(scale, int) or scale < 1:
        raise ConfigError(f"scale must be a positive integer; got {scale!r}.")
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)
    if scale > 1:
        grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    dest = Path(path)
    atomic_write_bytes(dest, _png_bytes(grid))
    return dest


def save_images(images: Tensor, folder: PathLike, *, prefix: str = "img") -> list[Path]:
    """Save each image as its own PNG, ``{prefix}_{i:05d}.png``, atomically.

    Args:
        images: (N, C, H, W) float images in [-1, 1], C in {1, 3}.
        folder: Destination folder (created if needed).
        prefix: File name prefix.

    Returns:
        The N paths written, in batch order.
    """
    check_images(images, "images", value_range=None)
    out = Path(folder)
    width = max(5, len(str(len(images) - 1)))
    paths = []
    for i, image in enumerate(images):
        dest = out / f"{prefix}_{i:0{width}d}.png"
        atomic_write_bytes(dest, _png_bytes(image))
        paths.append(dest)
    return paths
