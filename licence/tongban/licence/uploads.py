"""What a verifier uploads: a licence PDF, an image of a QR code, or an SD-JWT / QR text
file. Returns the licence text to verify, or raises ``UploadUnreadable`` with a sentence
for the page. PDFs are rasterised with poppler's ``pdftoppm`` (first page only, bounded
time) and QR codes read with zxing-cpp; nothing here touches the network.

Decoding to pixels is what costs memory, so it is bounded three ways (docs/web.md,
"Verification"): a PDF's first page is measured with ``pdfinfo`` before it is rendered and
refused if it would exceed ``MAX_PIXELS`` at ``PDF_DPI``; ``pdftoppm`` is told the exact
pixel area it may render, so a page that measures small but renders large is cut, not
grown; and ``RenderSlots`` lets only a few decodes run at once, queues a few more, and
refuses the rest with ``RenderBusy`` (HTTP 503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import zxingcpp
from PIL import Image, UnidentifiedImageError

from tongban.errors import TongbanError

__all__ = [
    "MAX_PIXELS",
    "MAX_UPLOAD",
    "PDF_DPI",
    "RenderBusy",
    "RenderSlots",
    "UploadUnreadable",
    "licence_text_from_upload",
]

MAX_UPLOAD = 10 * 1024 * 1024
"""The largest upload read (a licence PDF is well under 1 MiB)."""
MAX_PIXELS = 40_000_000
"""The most pixels decoded from one upload (an A4 page at 200 dpi is 3.9 million)."""
PDF_DPI = 200
"""The resolution a PDF's first page is rendered at."""
_MAX_SIDE = 20_000  # pixels: 2.5 m at 200 dpi
_PDF_SECONDS = 20.0
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")
# pdfinfo's lines for page 1. The last match counts: the document's own metadata (title,
# author) is printed before them and could imitate one.
_PAGE_SIZE = re.compile(rb"^Page\s+1 size:\s+([0-9.]+) x ([0-9.]+) pts", re.MULTILINE)
_PAGE_ROT = re.compile(rb"^Page\s+1 rot:\s+([0-9]+)", re.MULTILINE)


class UploadUnreadable(TongbanError):
    reason = "UPLOAD_UNREADABLE"
    status = "INVALID_ARGUMENT"


class RenderBusy(TongbanError):
    """Every render slot is taken and the queue is full (or the wait ran out)."""

    reason = "RENDER_BUSY"
    status = "UNAVAILABLE"
    retry_after = 10.0


class RenderSlots:
    """At most ``running`` uploads decoded to pixels at once; up to ``waiting`` more wait
    for a slot, each at most ``wait`` seconds; anything beyond is refused at once. One per
    console (so per node and event loop)."""

    def __init__(self, running: int = 2, waiting: int = 6, wait: float = 10.0) -> None:
        if running < 1 or waiting < 0 or wait <= 0:
            raise ValueError("running >= 1, waiting >= 0 and wait > 0")
        self._semaphore = asyncio.Semaphore(running)
        self._admitted = 0
        self._capacity = running + waiting
        self._wait = wait

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a render slot for the block; raise RenderBusy if none comes in time."""
        if self._admitted >= self._capacity:
            raise RenderBusy(_BUSY)
        self._admitted += 1
        try:
            try:
                async with asyncio.timeout(self._wait):
                    await self._semaphore.acquire()
            except TimeoutError:
                raise RenderBusy(_BUSY) from None
            try:
                yield
            finally:
                self._semaphore.release()
        finally:
            self._admitted -= 1


_BUSY = "The node is reading other uploads just now; send the file again in a few seconds."


def _is_image(data: bytes) -> bool:
    return data.startswith(_IMAGE_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _qr_from_image(data: bytes, what: str) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise UploadUnreadable(
                    f"The {what} is too large to read ({image.width} x {image.height} pixels)."
                )
            image.load()
            texts = [r.text for r in zxingcpp.read_barcodes(image.convert("L"))]
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise UploadUnreadable(f"The {what} could not be read as an image.") from e
    codes = [t for t in texts if t]
    if not codes:
        raise UploadUnreadable(f"No QR code was found in the {what}.")
    for text in codes:
        if text.startswith("TB1:") or text.count(".") >= 2:
            return str(text)
    return str(codes[0])


def page_pixels(pdfinfo_output: bytes, dpi: int = PDF_DPI) -> tuple[int, int]:
    """The width and height in pixels of page 1 rendered at ``dpi`` (its crop box, turned
    by its rotation), from ``pdfinfo -f 1 -l 1``'s output; raise UploadUnreadable if the
    output names no page 1 or the page exceeds MAX_PIXELS."""
    sizes = _PAGE_SIZE.findall(pdfinfo_output)
    if not sizes:
        raise UploadUnreadable("The PDF could not be opened (damaged or not a PDF).")
    try:
        width_pt, height_pt = (float(v) for v in sizes[-1])
    except ValueError:
        raise UploadUnreadable("The PDF could not be opened (damaged or not a PDF).") from None
    # Measured in floats, so a page of 10^400 points is refused, not an OverflowError.
    width_px, height_px = width_pt / 72 * dpi, height_pt / 72 * dpi
    # Also refuses inf and nan; the side limit stops a sliver (huge x tiny) of few pixels.
    if not (width_px * height_px <= MAX_PIXELS and max(width_px, height_px) <= _MAX_SIDE):
        raise UploadUnreadable(
            f"The PDF's first page is too large to read ({width_pt / 72 * 25.4:.0f} x "
            f"{height_pt / 72 * 25.4:.0f} mm); upload the licence as issued (A4), or a "
            "picture of its QR code."
        )
    width, height = max(1, math.ceil(width_px)), max(1, math.ceil(height_px))
    rotations = _PAGE_ROT.findall(pdfinfo_output)
    if rotations and int(rotations[-1]) % 180 == 90:
        width, height = height, width
    return width, height


async def _run(*command: str, deadline: float) -> tuple[int, bytes]:
    """Run ``command`` until the loop's time ``deadline``; its exit code and stdout. The
    process is killed if it runs out of time or the request goes away."""
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        async with asyncio.timeout_at(deadline):
            out, _ = await process.communicate()
    except TimeoutError:
        raise UploadUnreadable("The PDF took too long to open.") from None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode if process.returncode is not None else -1, out


async def _qr_from_pdf(data: bytes) -> str:
    deadline = asyncio.get_running_loop().time() + _PDF_SECONDS
    with tempfile.TemporaryDirectory(prefix="tongban-web-") as tmp:
        source = Path(tmp) / "upload.pdf"
        source.write_bytes(data)
        code, info = await _run("pdfinfo", "-f", "1", "-l", "1", str(source), deadline=deadline)
        if code != 0:
            raise UploadUnreadable("The PDF could not be opened (damaged or not a PDF).")
        width, height = page_pixels(info)
        code, _ = await _run(
            "pdftoppm", "-r", str(PDF_DPI), "-cropbox", "-png", "-f", "1", "-l", "1",
            "-singlefile", "-x", "0", "-y", "0", "-W", str(width), "-H", str(height),
            str(source), str(Path(tmp) / "page"),
            deadline=deadline,
        )  # fmt: skip
        page = Path(tmp) / "page.png"
        if code != 0 or not page.exists():
            raise UploadUnreadable("The PDF could not be opened (damaged or not a PDF).")
        return await asyncio.to_thread(_qr_from_image, page.read_bytes(), "PDF's first page")


async def licence_text_from_upload(data: bytes, slots: RenderSlots) -> str:
    """The licence text in an uploaded file; raise UploadUnreadable, or RenderBusy if
    ``slots`` has no room for decoding a PDF or an image."""
    if not data:
        raise UploadUnreadable("The file is empty.")
    if data.startswith(b"%PDF-"):
        async with slots.slot():
            return await _qr_from_pdf(data)
    if _is_image(data):
        async with slots.slot():
            return await asyncio.to_thread(_qr_from_image, data, "image")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        text = ""
    looks_like = text.startswith("TB1:") or text.count(".") >= 2
    if text and len(text) <= 64 * 1024 and looks_like and text.isprintable():
        return text
    raise UploadUnreadable(
        "The file is not a licence PDF, an image of a QR code, or an SD-JWT licence."
    )
