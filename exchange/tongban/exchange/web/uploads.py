"""What a verifier uploads: a licence PDF, an image of a QR code, or an SD-JWT / QR text
file. Returns the licence text to verify, or raises ``UploadUnreadable`` with a sentence
for the page. PDFs are rasterised with poppler's ``pdftoppm`` (first page only, bounded
time) and QR codes read with zxing-cpp; nothing here touches the network."""

from __future__ import annotations

import asyncio
import io
import tempfile
from pathlib import Path

import zxingcpp
from PIL import Image, UnidentifiedImageError

from tongban.errors import TongbanError

__all__ = ["MAX_UPLOAD", "UploadUnreadable", "licence_text_from_upload"]

MAX_UPLOAD = 10 * 1024 * 1024
"""The largest upload read (a licence PDF is well under 1 MiB)."""
_MAX_PIXELS = 40_000_000
_PDF_SECONDS = 20.0
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


class UploadUnreadable(TongbanError):
    reason = "UPLOAD_UNREADABLE"
    status = "INVALID_ARGUMENT"


def _is_image(data: bytes) -> bool:
    return data.startswith(_IMAGE_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _qr_from_image(data: bytes, what: str) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > _MAX_PIXELS:
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


async def _qr_from_pdf(data: bytes) -> str:
    with tempfile.TemporaryDirectory(prefix="tongban-web-") as tmp:
        source = Path(tmp) / "upload.pdf"
        source.write_bytes(data)
        process = await asyncio.create_subprocess_exec(
            "pdftoppm", "-r", "200", "-png", "-f", "1", "-l", "1", "-singlefile",
            str(source), str(Path(tmp) / "page"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            async with asyncio.timeout(_PDF_SECONDS):
                code = await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise UploadUnreadable("The PDF took too long to open.") from None
        page = Path(tmp) / "page.png"
        if code != 0 or not page.exists():
            raise UploadUnreadable("The PDF could not be opened (damaged or not a PDF).")
        return await asyncio.to_thread(_qr_from_image, page.read_bytes(), "PDF's first page")


async def licence_text_from_upload(data: bytes) -> str:
    """The licence text in an uploaded file; raise UploadUnreadable."""
    if not data:
        raise UploadUnreadable("The file is empty.")
    if data.startswith(b"%PDF-"):
        return await _qr_from_pdf(data)
    if _is_image(data):
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
