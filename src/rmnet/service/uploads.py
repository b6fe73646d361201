"""Untrusted input: multipart uploads read into memory under a size limit, image bytes decoded safely.

Nothing here writes to disk. Starlette's own form parser spools file parts over 1 MB to a temporary
file; :func:`read_form` parses the multipart body with python-multipart (the parser Starlette uses)
into memory instead, so an upload only reaches the disk when ``POST /api/cases`` stores it.

Every rejection is a :class:`RequestError` with a 4xx status and a sentence saying what was wrong.
"""

from __future__ import annotations

import io
import re
from collections.abc import Collection
from dataclasses import dataclass

from PIL import Image, ImageOps
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

# Formats the service decodes (JPEG includes MPO, as cameras write it). Pillow reads more (EPS, PSD,
# ICO, ...); fewer decoders on untrusted bytes, fewer surprises.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif",
              "GIF": ".gif"}  # fmt: skip
MAX_PARTS = 8
MAX_TEXT_FIELD_BYTES = 4096
DRAFT_SHORT_EDGE = 1024  # large JPEGs decode at a reduced scale (libjpeg DCT scaling), never below this
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
    request: Request, *, max_bytes: int, allowed: Collection[str], required: Collection[str] = ("image",)
) -> dict[str, Part]:
    """The fields of a ``multipart/form-data`` request body, read into memory.

    413 when the body is over ``max_bytes`` (checked on Content-Length before reading, and while
    reading); 415 when it is not multipart; 400 when it is malformed; 422 for a missing, unknown or
    repeated field, or a text field over 4 KB.
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
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise _too_large(max_bytes)
            parser.write(chunk)
        parser.finalize()
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


@dataclass(frozen=True)
class DecodedImage:
    """An uploaded image, decoded: upright RGB pixels, the file's format and its stored size."""

    image: Image.Image
    format: str
    width: int
    height: int

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


def decode_image(
    data: bytes, *, max_pixels: int, draft_short_edge: int | None = DRAFT_SHORT_EDGE
) -> DecodedImage:
    """Decode untrusted image bytes to upright RGB; a :class:`RequestError` for anything unusable.

    - 422 empty upload; 415 not an image, or a format the service does not read (see ``FORMATS``);
    - 422 more than ``max_pixels`` pixels (checked on the header, before any pixel is decoded:
      a "decompression bomb" of a few KB that would expand to gigabytes never gets decoded);
    - 422 truncated or corrupt data (Pillow refuses truncated files by default).

    EXIF orientation is applied and any mode (grayscale, CMYK, palette, alpha) becomes RGB, as for
    image files in ``rmnet.data.images.open_rgb``. JPEGs much larger than the network needs decode at
    a reduced scale whose short edge stays at least ``draft_short_edge``.
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
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # our own decoded copy: no need for another
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        rgb.load()
    except RequestError:
        image.close()
        raise
    except Exception as err:  # noqa: BLE001 - truncated, corrupt or hostile data: the upload's fault
        image.close()
        raise RequestError(422, f"the image data is truncated or corrupt: {_reason(err)}") from None
    if rgb is not image:
        image.close()
    return DecodedImage(rgb, file_format, width, height)


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
