"""Untrusted input: multipart uploads read into memory under a size limit, image bytes decoded safely.

Nothing here writes to disk. Starlette's own form parser spools file parts over 1 MB to a temporary
file; :func:`read_form` parses the multipart body with python-multipart (the parser Starlette uses)
into memory instead, so an upload only reaches the disk when ``POST /api/cases`` stores it.

Memory: an image is decoded only inside a :class:`PixelBudget` (the pixels being decoded at once in
this process), at a reduced size as early as its format allows (JPEG: libjpeg's DCT scaling before
decoding; others: ``Image.reduce`` in the decoded mode, before any conversion), so a small upload
of a huge image cannot cost gigabytes. 16-bit images are scaled by their bit depth, transparency is
composited onto white (:func:`to_rgb`).

Every rejection is a :class:`RequestError` with a 4xx status and a sentence saying what was wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from PIL import Image
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from rmnet.data.images import to_8bit, to_rgb

# Formats the service decodes (JPEG includes MPO, as cameras write it). Pillow reads more (EPS, PSD,
# ICO, ...); fewer decoders on untrusted bytes, fewer surprises.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif",
              "GIF": ".gif"}  # fmt: skip
MAX_PARTS = 8
MAX_TEXT_FIELD_BYTES = 4096
DRAFT_SHORT_EDGE = 1024  # large images are reduced (JPEGs while decoding) to a short edge not below this
TRIM_AFTER_PIXELS = 4_000_000  # after decoding an image this large, freed memory goes back to the OS
ORIENTATION = 0x0112
_T = Image.Transpose
TRANSPOSE = {
    2: _T.FLIP_LEFT_RIGHT,
    3: _T.ROTATE_180,
    4: _T.FLIP_TOP_BOTTOM,
    5: _T.TRANSPOSE,
    6: _T.ROTATE_270,
    7: _T.TRANSVERSE,
    8: _T.ROTATE_90,
}  # fmt: skip (EXIF orientation → turn)
CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class RequestError(Exception):
    """A request the service refuses: HTTP ``status`` (4xx) and the reason, in words."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


@dataclass(frozen=True)
class Part:
    """One field of a multipart form: a file (with a file name) or a text value."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None

    def text(self) -> str:
        try:
            return self.data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise RequestError(422, f"form field {self.name!r} is not UTF-8 text") from None


async def read_form(
    request: Request,
    *,
    max_bytes: int,
    allowed: Collection[str],
    required: Collection[str] = ("image",),
    pause_timeout: float | None = None,
) -> dict[str, Part]:
    """The fields of a ``multipart/form-data`` request body, read into memory.

    413 when the body is over ``max_bytes`` (checked on Content-Length before reading, and while
    reading); 415 when it is not multipart; 400 when it is malformed; 422 for a missing, unknown or
    repeated field, or a text field over 4 KB; 408 when the client sends nothing for
    ``pause_timeout`` seconds in the middle of the body.
    """
    content_type = request.headers.get("content-type", "")
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise RequestError(
            415,
            "send the image as multipart/form-data in the field 'image' (this request's Content-Type is "
            f"{content_type or 'missing'!r})",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise RequestError(400, "the multipart/form-data Content-Type has no boundary parameter")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise RequestError(400, f"invalid Content-Length header {declared!r}")
        if int(declared) > max_bytes:
            raise _too_large(max_bytes)

    collector = _PartCollector()
    parser = MultipartParser(boundary, collector.callbacks())
    received = 0
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(pause_timeout) as pause:  # one timer, moved on after every chunk
            async for chunk in request.stream():
                if pause_timeout is not None:
                    pause.reschedule(loop.time() + pause_timeout)
                received += len(chunk)
                if received > max_bytes:
                    raise _too_large(max_bytes)
                parser.write(chunk)
        parser.finalize()
    except TimeoutError:
        raise RequestError(
            408, f"the upload stalled: nothing received for {pause_timeout:g} s", {"Connection": "close"}
        ) from None
    except FormParserError as err:
        raise RequestError(400, f"the multipart/form-data body is malformed ({err})") from None
    except ClientDisconnect:
        raise RequestError(400, "the client closed the connection before the upload was complete") from None

    sent = [part.name for part in collector.parts]
    missing = [name for name in required if name not in sent]
    if missing:
        got = ", ".join(repr(name) for name in sent) or "no fields"
        raise RequestError(422, f"missing the form field {missing[0]!r} (the request has {got})")
    parts: dict[str, Part] = {}
    for part in collector.parts:
        if part.name not in allowed:
            expected = ", ".join(repr(name) for name in allowed)
            raise RequestError(422, f"unexpected form field {part.name!r}; this endpoint takes {expected}")
        if part.name in parts:
            raise RequestError(422, f"form field {part.name!r} was sent more than once")
        if part.filename is None and part.name != "image" and len(part.data) > MAX_TEXT_FIELD_BYTES:
            raise RequestError(422, f"form field {part.name!r} is longer than {MAX_TEXT_FIELD_BYTES} bytes")
        parts[part.name] = part
    return parts


def _too_large(max_bytes: int) -> RequestError:
    return RequestError(413, f"the upload is larger than the limit of {max_bytes / 2**20:.3g} MB")


class _PartCollector:
    """python-multipart callbacks that keep every part in memory (the body size is already capped)."""

    def __init__(self) -> None:
        self.parts: list[Part] = []
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._data = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_part_data": self._part_data,
            "on_part_end": self._end,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
        }

    def _begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise RequestError(422, f"the form has more than {MAX_PARTS} fields")
        self._headers, self._data = {}, bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data += data[start:end]

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def _end(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise RequestError(400, "a multipart part has no Content-Disposition: form-data; name=...")
        filename = options.get(b"filename")
        content_type = self._headers.get(b"content-type")
        self.parts.append(
            Part(
                name=options[b"name"].decode("utf-8", "replace"),
                data=bytes(self._data),
                filename=None if filename is None else filename.decode("utf-8", "replace"),
                content_type=None if content_type is None else content_type.decode("latin-1"),
            )
        )


class PixelBudget:
    """The pixels being decoded at once in this process, at most ``pixels``: a decode that would go
    over waits up to ``wait_s`` seconds for others to finish, then is refused (503, Retry-After)."""

    def __init__(self, pixels: int, wait_s: float = 2.0) -> None:
        self.pixels, self.wait_s = int(pixels), wait_s
        self.in_use = 0
        self.peak = 0  # the most pixels ever decoded at once (GET /healthz)
        self.refused = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        pixels = min(int(pixels), self.pixels)  # one image of max_pixels always fits on its own
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while self.in_use + pixels > self.pixels:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.refused += 1
                    raise RequestError(
                        503,
                        f"the service is decoding {self.in_use / 1e6:.1f} megapixels of other uploads "
                        "(its memory budget): try again shortly",
                        {"Retry-After": "1"},
                    )
                self._cond.wait(remaining)
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= pixels
                self._cond.notify_all()

    def to_dict(self) -> dict[str, float]:
        return {
            "budget_megapixels": self.pixels / 1e6,
            "in_use_megapixels": self.in_use / 1e6,
            "peak_megapixels": self.peak / 1e6,
            "refused": self.refused,
        }


@dataclass(frozen=True)
class DecodedImage:
    """An uploaded image, decoded: upright RGB pixels (reduced when large: short edge at least
    ``DRAFT_SHORT_EDGE``), the file's format and its stored size."""

    image: Image.Image
    format: str
    width: int
    height: int

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    draft_short_edge: int | None = DRAFT_SHORT_EDGE,
    budget: PixelBudget | None = None,
) -> DecodedImage:
    """Decode untrusted image bytes to upright RGB; a :class:`RequestError` for anything unusable.

    - 422 empty upload; 415 not an image, or a format the service does not read (see ``FORMATS``);
    - 422 more than ``max_pixels`` pixels (checked on the header, before any pixel is decoded:
      a "decompression bomb" of a few KB that would expand to gigabytes never gets decoded);
    - 422 truncated or corrupt data (Pillow refuses truncated files by default);
    - 503 when decoding it would take ``budget`` over its pixels for longer than its wait.

    EXIF orientation is applied and any mode becomes RGB (:func:`to_rgb`). An image whose short edge
    is over ``draft_short_edge`` is reduced by an integer factor that keeps it at least that long:
    JPEGs while decoding (libjpeg's DCT scaling), others right after, in their own mode.
    """
    if not data:
        raise RequestError(422, "the uploaded image is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.UnidentifiedImageError:
        readable = ", ".join(sorted(set(EXTENSIONS.values())))
        raise RequestError(415, f"the upload is not an image the service reads ({readable})") from None
    except Image.DecompressionBombError as err:  # over twice Pillow's own limit: refused before decoding
        size = re.search(r"\((\d+) pixels\)", str(err))  # Pillow's message quotes its own limit, not ours
        pixels = f"{int(size.group(1)):,} pixels, " if size else ""
        raise RequestError(
            422,
            f"the image is {pixels}more than the limit of {max_pixels:,} pixels (a decompression bomb, or a "
            "photograph to downscale first)",
        ) from None
    except Exception as err:  # noqa: BLE001 - any failure on untrusted bytes is the upload's fault
        raise RequestError(422, f"the image cannot be read: {_reason(err)}") from None
    try:
        width, height = image.size
        if width < 1 or height < 1:
            raise RequestError(422, f"the image has no pixels ({width} × {height})")
        if width * height > max_pixels:
            raise RequestError(
                422,
                f"the image is {width} × {height} = {width * height:,} pixels, more than the limit of "
                f"{max_pixels:,} (a decompression bomb, or a photograph to downscale first)",
            )
        file_format = image.format or "unknown"
        if draft_short_edge and file_format in ("JPEG", "MPO") and min(width, height) > draft_short_edge:
            scale = draft_short_edge / min(width, height)
            image.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))
        reserve = budget.reserve(image.width * image.height) if budget else contextlib.nullcontext()
        with reserve:
            try:
                image.load()
                orientation = image.getexif().get(ORIENTATION)
                rgb = to_rgb(_reduce(image, draft_short_edge))
                if orientation in TRANSPOSE:
                    rgb = rgb.transpose(TRANSPOSE[orientation])
                rgb.load()
            except RequestError:
                raise
            except Exception as err:  # noqa: BLE001 - truncated, corrupt or hostile data: the upload's fault
                raise RequestError(422, f"the image data is truncated or corrupt: {_reason(err)}") from None
    except BaseException:
        image.close()
        raise
    if rgb is not image:
        image.close()  # the full-size pixels go now, not when the garbage collector gets to them
        if width * height >= TRIM_AFTER_PIXELS:
            _return_freed_memory()
    return DecodedImage(rgb, file_format, width, height)


def _reduce(image: Image.Image, short_edge: int | None) -> Image.Image:
    """``image`` shrunk by the largest integer factor that keeps its short edge at least
    ``short_edge`` (``image`` itself when it is not larger), in its own mode where Pillow can."""
    factor = min(image.size) // short_edge if short_edge else 1
    if factor < 2:
        return image
    if image.mode == "P":  # palette indices cannot be averaged
        return image.resize((image.width // factor, image.height // factor), Image.Resampling.NEAREST)
    if image.mode == "1" or image.mode.startswith(("I", "F")):
        image = to_8bit(image)
    return image.reduce(factor)


def _return_freed_memory() -> None:
    """Give freed heap memory back to the OS (glibc's ``malloc_trim``): without it a process keeps
    the high-water mark of its decodes (hundreds of MB after a burst of large uploads)."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 - glibc only
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


def check_case_id(case_id: str) -> str:
    """A case id chosen by a client: letters, digits, ``.``, ``_``, ``-`` (not first), at most 128.

    The id names the stored file, so no path separator, no ``..`` and no leading dot get through.
    """
    if not CASE_ID.fullmatch(case_id) or ".." in case_id:
        raise RequestError(
            422,
            f"invalid case id {case_id[:80]!r}: use 1-128 letters, digits, '.', '_' or '-', starting with "
            "a letter or digit, without '..'",
        )
    return case_id


def _reason(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text if len(text) <= 200 else text[:200] + "…"
