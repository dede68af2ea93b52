"""Image tensors: value ranges, 8-bit quantisation, resizing, reading and writing image files.

genprov's images are float32 tensors of shape (N, C, H, W) with values in [-1, 1]; C is 1 (grayscale) or
3 (RGB). The functions here convert between that convention and 8-bit pixels (uint8 0..255) exactly the
way a PNG file stores them, so ``png_roundtrip(x)`` equals saving ``x`` with :func:`save_images` and
reading it back with :func:`load_image`.

Every image read from outside (files, folders, uploads) passes the same checks, each failing with a
:class:`~genprov.exceptions.DataError` that names the image:

* at most :func:`max_decoded_pixels` pixels (default :data:`MAX_DECODED_PIXELS` = 4096 x 4096, or the
  environment variable ``GENPROV_MAX_PIXELS``; the ``max_pixels`` argument overrides both), checked from the
  header before any pixel is decoded;
* fully decoded: a truncated or corrupt file is an error, never padded (whatever
  ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` says);
* when resized to ``size``: a shorter side of at least :func:`min_image_size` (half of ``size``; the
  ``min_size`` argument overrides it), and a logged warning saying how many images were resized.

Example:
    >>> import torch
    >>> x = torch.rand(4, 3, 8, 8) * 2 - 1
    >>> bool((png_roundtrip(png_roundtrip(x)) == png_roundtrip(x)).all())
    True
"""

from __future__ import annotations

import errno
import io
import logging
import math
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, UnidentifiedImageError
from torch import Tensor

from genprov.exceptions import ConfigError, DataError
from genprov.utils.io import atomic_write_bytes
from genprov.utils.validation import check_images

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_DECODED_PIXELS",
    "MAX_PIXELS_ENV",
    "decode_image",
    "expand_image_paths",
    "image_sizes",
    "image_to_tensor",
    "load_image",
    "load_images",
    "make_grid",
    "max_decoded_pixels",
    "min_image_size",
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

#: Default cap on an image's pixels (width x height), checked from the file header before decoding: a
#: guard against decompression bombs (a small file whose header claims e.g. 50000x50000 pixels). Every
#: reader here (the CLI's loaders and the service's :func:`decode_image`) applies the same cap.
MAX_DECODED_PIXELS = 4096 * 4096
#: Environment variable that overrides :data:`MAX_DECODED_PIXELS` (a positive integer number of pixels).
MAX_PIXELS_ENV = "GENPROV_MAX_PIXELS"

logger = logging.getLogger(__name__)
_TRUNCATED_FLAG_LOCK = threading.Lock()


def max_decoded_pixels() -> int:
    """The pixel cap in force: ``$GENPROV_MAX_PIXELS`` when set, else :data:`MAX_DECODED_PIXELS`.

    Pillow refuses on its own any image above ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (about 179 million
    pixels), so a larger cap has no effect beyond that.

    Raises:
        ConfigError: If the environment variable is not a positive integer.
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return MAX_DECODED_PIXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(
            f"{MAX_PIXELS_ENV} must be a positive whole number of pixels (e.g. {MAX_DECODED_PIXELS}); got {raw!r}. "
            "Unset it to use the default."
        )
    return value


def min_image_size(size: int) -> int:
    """Smallest side (pixels) an image may have to be resized to ``size`` x ``size``: half of it, rounded up.

    Upscaling more than 2x invents the fine detail that the detectors and attribution methods score, so a
    verdict on such an image would be confident and meaningless; the loaders refuse it instead.
    """
    return (size + 1) // 2


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


def _too_large(name: str, what: str, cap: int) -> DataError:
    return DataError(
        f"{name} is {what}, more than the {cap:,} allowed (a guard against decompression bombs); use a smaller "
        f"image, or raise the cap with the environment variable {MAX_PIXELS_ENV}."
    )


def _load_complete(image: Image.Image) -> None:
    """Decode all of ``image``'s pixels; truncated data is an error even if another library set
    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` (which pads missing pixels with grey)."""
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        image.load()
        return
    with _TRUNCATED_FLAG_LOCK:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            image.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = True


def _decode(source: ImageSource, name: str, *, max_pixels: int | None = None, header_only: bool = False) -> Image.Image:
    """Open an image (a path or encoded bytes), check its header against the pixel cap, and decode it fully
    unless ``header_only``.

    ``name`` is how error messages refer to the image; ``max_pixels`` defaults to :func:`max_decoded_pixels`.
    With ``header_only`` the file is closed again at once and only ``size`` and ``mode`` of the returned
    image are meaningful.
    """
    cap = max_decoded_pixels() if max_pixels is None else max_pixels
    if isinstance(source, bytes) and not source:
        raise DataError(f"{name} is empty (0 bytes); use a PNG or JPEG file.")
    stream: PathLike | BinaryIO = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        image = Image.open(stream)
        width, height = image.size
        if width * height > cap:
            image.close()
            raise _too_large(name, f"{width}x{height} pixels", cap)
        if header_only:
            image.close()
        else:
            _load_complete(image)
    except Image.DecompressionBombError as err:  # Pillow's own, larger cap refused it while opening
        claimed = re.search(r"\((\d+) pixels\)", str(err))
        what = f"{int(claimed[1]):,} pixels" if claimed else f"over {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels"
        raise _too_large(name, what, cap) from None
    except UnidentifiedImageError:
        empty = not isinstance(source, bytes) and os.path.getsize(source) == 0
        what = "is empty (0 bytes)" if empty else "is not an image Pillow can read (PNG, JPEG, WebP, ...)"
        raise DataError(f"{name} {what}; use a PNG or JPEG file.") from None
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        if isinstance(err, OSError) and err.errno is not None:  # the file system's answer, e.g. no permission
            raise DataError(f"Cannot read image {name}: {err.strerror or errno.errorcode.get(err.errno)}.") from None
        raise DataError(
            f"Cannot read image {name}: {err}. The file is truncated or corrupt; export or copy it again."
        ) from None
    return image


def _check_file(path: Path) -> None:
    if not path.is_file():
        what = "is a folder, not an image file" if path.is_dir() else "does not exist"
        raise DataError(f"Image file {path} {what}.")


def read_pil_image(path: Path, *, max_pixels: int | None = None) -> Image.Image:
    """Decode the image file ``path``; a missing, unreadable, too large or truncated file raises :class:`DataError`."""
    _check_file(path)
    return _decode(path, str(path), max_pixels=max_pixels)


def _image_channels(image: Image.Image) -> int:
    return 1 if image.mode in _GRAY_MODES else 3


def _deep_gray(image: Image.Image, name: str) -> np.ndarray | None:
    """Values in [0, 1] of a grayscale image deeper than 8 bits (16-bit, 32-bit integer or float), else None.

    Converting these to 8-bit ``L`` would clip: 16-bit values above 255 all become white, floats in [0, 1]
    black. Integer pixels are read as 16-bit (0..65535), float pixels must lie in [0, 1].
    """
    if not (image.mode.startswith("I") or image.mode == "F"):
        return None
    arr = np.asarray(image, dtype=np.float64)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if image.mode == "F":
        if not (math.isfinite(lo) and math.isfinite(hi) and lo >= 0.0 and hi <= 1.0):
            raise DataError(
                f"{name} is a floating-point (mode F) image with values in [{lo:.4g}, {hi:.4g}]; genprov reads float "
                "pixels in [0, 1] only. Save it as an 8- or 16-bit PNG."
            )
        return arr
    if lo < 0 or hi > 65535:
        raise DataError(
            f"{name} is a 32-bit integer (mode {image.mode}) image with values in [{lo:.0f}, {hi:.0f}]; genprov reads "
            "integer pixels in 0..65535 (16-bit) only. Save it as an 8- or 16-bit PNG."
        )
    return arr / 65535.0


def _to_tensor(image: Image.Image, channels: int, name: str) -> Tensor:
    """(C, H, W) float32 tensor in [-1, 1] from a decoded Pillow image (``name`` for error messages)."""
    deep = _deep_gray(image, name)
    if deep is not None:
        gray = torch.from_numpy(deep.astype(np.float32))[None] * 2.0 - 1.0
        return gray.expand(channels, -1, -1).contiguous()
    target = "L" if channels == 1 else "RGB"
    try:
        arr = np.asarray(image.convert(target), dtype=np.uint8)
    except ValueError as err:
        raise DataError(f"{name} has pixel mode {image.mode} ({err}); save it as an RGB or grayscale PNG.") from None
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


def decode_image(data: bytes, *, name: str = "the upload", max_pixels: int | None = None) -> Image.Image:
    """Decode encoded image bytes (PNG, JPEG, WebP, ...) that came from outside, e.g. an upload.

    Args:
        data: The file's bytes.
        name: How error messages refer to the image.
        max_pixels: Refuse larger images (checked from the header, before decoding); default
            :func:`max_decoded_pixels` (``$GENPROV_MAX_PIXELS`` or :data:`MAX_DECODED_PIXELS`).

    Returns:
        The decoded Pillow image; turn it into a tensor with :func:`image_to_tensor`.

    Raises:
        DataError: Empty data, not an image, truncated or corrupt, or too large.
    """
    return _decode(data, name, max_pixels=max_pixels)


def _check_min_size(name: str, width: int, height: int, size: int | None, min_size: int | None) -> None:
    """Refuse an image whose shorter side is below ``min_size`` (default: :func:`min_image_size` of ``size``)."""
    floor = min_size if min_size is not None else (min_image_size(size) if size is not None else None)
    if floor is None or min(width, height) >= floor:
        return
    target = f" to be resized to {size}x{size}" if size is not None else ""
    raise DataError(
        f"{name} is {width}x{height} pixels; images must be at least {floor}x{floor}{target} (upscaling more "
        "than 2x invents the detail the method scores, so its answer would mean nothing). Use the original, "
        "larger image."
    )


def image_to_tensor(
    image: Image.Image,
    *,
    size: int | None = None,
    channels: int | None = None,
    min_size: int | None = None,
    name: str = "the image",
) -> Tensor:
    """A decoded Pillow image as a (C, H, W) float32 tensor in [-1, 1].

    Args:
        image: The image (any mode Pillow converts to L or RGB; 16-bit grayscale is kept at full depth).
        size: If given, resize (centre-crop non-square images first) to ``size`` x ``size``.
        channels: 1 (grayscale, by luminance) or 3 (RGB, grayscale replicated); ``None`` keeps the image's own.
        min_size: Refuse an image whose shorter side is below this many pixels (e.g.
            ``min_image_size(size)``); ``None`` checks nothing.
        name: How error messages refer to the image.

    Raises:
        DataError: The image is smaller than ``min_size`` or its pixels cannot be read as 8- or 16-bit values.
    """
    _check_channels(channels)
    if min_size is not None:
        _check_min_size(name, image.width, image.height, size, min_size)
    x = _to_tensor(image, channels or _image_channels(image), name)
    return resize_images(x[None], size)[0] if size is not None else x


def load_image(
    path: PathLike,
    *,
    size: int | None = None,
    channels: int | None = None,
    min_size: int | None = None,
    max_pixels: int | None = None,
) -> Tensor:
    """Read one image file as a float tensor (see :func:`load_images` for the arguments).

    Returns:
        (C, H, W) float32 tensor in [-1, 1].

    Raises:
        DataError: If the file is missing, not an image, truncated, too large or too small.
    """
    return load_images([path], size=size, channels=channels, min_size=min_size, max_pixels=max_pixels)[0]


def load_images(
    paths: Sequence[PathLike],
    *,
    size: int | None = None,
    channels: int | None = None,
    min_size: int | None = None,
    max_pixels: int | None = None,
) -> Tensor:
    """Read several image files into one batch.

    Every file's header is checked before any is decoded: at most ``max_pixels`` pixels, at least
    ``min_size`` pixels on its shorter side. Resizing is logged as a warning (one line for the batch).

    Args:
        paths: Image files.
        size: If given, resize every image to ``size`` x ``size``; required when the files differ in size.
        channels: 1 or 3; ``None`` gives 1 when every file is grayscale and 3 otherwise (an alpha channel
            is dropped).
        min_size: Refuse images whose shorter side is smaller (pixels). Default: when resizing, half of
            ``size`` rounded up (:func:`min_image_size`), since upscaling further invents detail; else none.
        max_pixels: Refuse images with more pixels (width x height); default :func:`max_decoded_pixels`.

    Returns:
        (N, C, H, W) float32 tensor in [-1, 1].

    Raises:
        DataError: If ``paths`` is empty, a file is missing, not an image, truncated, too large or too small,
            or sizes differ and ``size`` is ``None`` (the message names the file).
    """
    files = [Path(p) for p in paths]
    if not files:
        raise DataError("load_images got no paths; pass at least one image file.")
    for path in files:
        _check_file(path)
    return stack_images(
        [(str(p), p) for p in files], size=size, channels=channels, min_size=min_size, max_pixels=max_pixels
    )


def image_sizes(paths: Sequence[PathLike], *, max_pixels: int | None = None) -> list[tuple[int, int]]:
    """``(width, height)`` of each image file, read from its header (nothing is decoded).

    Raises:
        DataError: A file is missing, not an image, or over the pixel cap (``max_pixels``, default
            :func:`max_decoded_pixels`); the message names it.
    """
    sizes = []
    for path in map(Path, paths):
        _check_file(path)
        sizes.append(_decode(path, str(path), max_pixels=max_pixels, header_only=True).size)
    return sizes


def stack_images(
    sources: Sequence[tuple[str, ImageSource]],
    *,
    size: int | None = None,
    channels: int | None = None,
    min_size: int | None = None,
    max_pixels: int | None = None,
) -> Tensor:
    """Decode images (paths or encoded bytes) into one batch (see :func:`load_images` for the checks).

    Headers are read first (size and mode, to pick C and check sizes), then each image is decoded and
    written into the output, so only one decoded image is held at a time.

    Args:
        sources: ``(name, path or bytes)`` pairs; names appear in error messages.
        size: Resize every image to ``size`` x ``size``; required when sizes differ.
        channels: 1, 3, or ``None`` (1 when every image is grayscale, else 3).
        min_size: Smallest accepted shorter side; default :func:`min_image_size` of ``size`` when resizing.
        max_pixels: Largest accepted width x height; default :func:`max_decoded_pixels`.

    Returns:
        (N, C, H, W) float32 tensor in [-1, 1].
    """
    _check_channels(channels)
    if not sources:
        raise DataError("No images to stack; pass at least one image.")
    cap = max_decoded_pixels() if max_pixels is None else max_pixels
    headers = [_decode(source, name, max_pixels=cap, header_only=True) for name, source in sources]
    for (name, _), header in zip(sources, headers, strict=True):
        _check_min_size(name, header.width, header.height, size, min_size)
    if channels is None:
        channels = 1 if all(_image_channels(im) == 1 for im in headers) else 3
    _warn_converted([name for name, _ in sources], [h.mode for h in headers], channels)
    width, height = headers[0].size
    if size is None:
        for (name, _), header in zip(sources, headers, strict=True):
            if header.size != (width, height):
                raise DataError(
                    f"Images differ in size: {sources[0][0]} is {width}x{height} but {name} is "
                    f"{header.size[0]}x{header.size[1]} (width x height); use images of one size, or let the "
                    "command resize them where it offers that (see its --help)."
                )
    else:
        _warn_resized([name for name, _ in sources], [h.size for h in headers], size)
    out = torch.empty((len(sources), channels, size or height, size or width), dtype=torch.float32)
    for k, (name, source) in enumerate(sources):
        image = _to_tensor(_decode(source, name, max_pixels=cap), channels, name)
        out[k] = resize_images(image[None], size)[0] if size is not None else image
    return out


def _warn_converted(names: Sequence[str], modes: Sequence[str], channels: int) -> None:
    """Log one warning for a batch whose colour (or transparent) images are read as grey (``channels`` 1)."""
    changed = [(name, mode) for name, mode in zip(names, modes, strict=True) if mode not in _GRAY_MODES]
    if channels != 1 or not changed:
        return
    name, mode = changed[0]
    dropped = " (transparency dropped)" if any("A" in m for _, m in changed) else ""
    logger.warning(
        "converted %d of %d colour image(s) to grey%s, e.g. %s (mode %s); the model reads 1-channel images",
        len(changed),
        len(names),
        dropped,
        name,
        mode,
    )


def _warn_resized(names: Sequence[str], sizes: Sequence[tuple[int, int]], size: int) -> None:
    """Log one warning for a batch whose images had to be resized to ``size`` x ``size``."""
    changed = [(name, w, h) for name, (w, h) in zip(names, sizes, strict=True) if (w, h) != (size, size)]
    if not changed:
        return
    name, w, h = changed[0]
    cropped = " (non-square ones centre-cropped)" if any(cw != ch for _, cw, ch in changed) else ""
    logger.warning(
        "resized %d of %d image(s) to %dx%d%s, e.g. %s from %dx%d; answers on resized images are less certain",
        len(changed),
        len(names),
        size,
        size,
        cropped,
        name,
        w,
        h,
    )


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
    height, width = grid.shape[1] * scale, grid.shape[2] * scale
    if height * width > max_decoded_pixels():  # genprov could not read such a PNG back either
        raise ConfigError(
            f"The grid {path} would be {width}x{height} pixels, more than the {max_decoded_pixels():,} allowed "
            f"({MAX_PIXELS_ENV}); lower the scale (--scale {scale}) or the number of images."
        )
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
