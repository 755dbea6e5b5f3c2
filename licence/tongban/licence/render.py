"""Rendering an electronic licence (电子证照) as a one-page A4 PDF, and sealing it.

The page shows the title, the licence number, the holder, the claims as labelled rows,
the validity, the issuing department and date under a red round seal (电子印章) image,
and the licence's QR code (its ``TB1:`` text) drawn as vector modules.

Chinese text is set in Noto Sans CJK SC from the ``noto-cjk-sans-otc`` wheel and embedded
as a subset, so the PDF renders the same anywhere. The font's outlines are CFF: each
document embeds a CID-keyed CFF subset (``/FontFile3 /CIDFontType0C``) holding only the
glyphs it uses, desubroutinised by fontTools and assembled here, with a ToUnicode map so
the text can be searched and copied. The parsed font and each department's seal image
are cached for the life of the process.

``render_and_seal`` renders, then seals the PDF with the department's seal key as PAdES
(see ``tongban.signing.pades``).
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import threading
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path

import segno
from cryptography import x509
from fontTools import ttLib  # type: ignore[import-untyped]
from fontTools.cffLib import CFFFontSet  # type: ignore[import-untyped]
from fontTools.cffLib.transforms import desubroutinizeCharString  # type: ignore[import-untyped]
from PIL import Image, ImageDraw, ImageFont
from pyhanko.sign.timestamps import TimeStamper

from tongban.licence.errors import LicenceError
from tongban.signing.keys import PrivateKey, Signer
from tongban.signing.pades import seal_pdf, seal_pdf_async

__all__ = [
    "LicenceDocument",
    "LicenceTextUnsupported",
    "LicenceTooLong",
    "render_and_seal",
    "render_and_seal_async",
    "render_licence",
]


class LicenceTextUnsupported(LicenceError):
    """A text of the licence holds a character the embedded font cannot show (a control
    character, or a rare character outside Noto Sans CJK SC)."""

    reason = "LICENCE_TEXT_UNSUPPORTED"
    status = "INVALID_ARGUMENT"


class LicenceTooLong(LicenceError):
    """The licence's rows do not fit on one A4 page, even at the smallest type size."""

    reason = "LICENCE_TOO_LONG"
    status = "INVALID_ARGUMENT"


@dataclass(frozen=True)
class LicenceDocument:
    """What the rendered licence shows. Plain data; ``rows`` is stored as a tuple."""

    title: str
    """The licence type's name, e.g. 营业执照."""
    number: str
    """The licence number (证照编号)."""
    holder_name: str
    """The holder's name (持证主体), e.g. a company or a person."""
    holder_id: str
    """The holder's identifier (e.g. 统一社会信用代码, or an ID card number)."""
    rows: Sequence[tuple[str, str]]
    """The claims, as (label, value) rows in display order; a value may hold newlines."""
    issuer_name: str
    """The issuing department's Chinese name; also written around the seal."""
    issued: date
    """The issue date."""
    valid_from: date
    """The first day of validity."""
    valid_until: date | None
    """The last day of validity, or None for a licence valid indefinitely (长期)."""
    qr_text: str
    """The text the QR code carries (the licence's ``TB1:`` string)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple((str(k), str(v)) for k, v in self.rows))
        for name in ("title", "number", "holder_name", "issuer_name", "qr_text"):
            if not getattr(self, name).strip():
                raise ValueError(f"LicenceDocument.{name} must not be empty.")
        if self.valid_until is not None and self.valid_until < self.valid_from:
            raise ValueError(
                f"LicenceDocument.valid_until ({self.valid_until}) is before valid_from "
                f"({self.valid_from})."
            )


# ---------------------------------------------------------------------------------------
# The font: Noto Sans CJK SC, parsed once per process.

_FONT_PACKAGE = "noto_cjk_sans_otc"
_FONT_FILE = "NotoSansCJK-Regular.ttc"
_SC_FACE = 2  # the collection's faces: JP, KR, SC, TC, HK, then the Mono ones
_SC_PS_NAME = "NotoSansCJKsc-Regular"
_SUBRS_OP = b"\x13"  # Private DICT operator 19: the local subroutines' offset


def _font_path() -> Path:
    path = Path(str(resources.files(_FONT_PACKAGE).joinpath(_FONT_FILE)))
    if not path.is_file():
        raise RuntimeError(
            f"The CJK font {_FONT_FILE} is not a file at {path}; reinstall the "
            "noto-cjk-sans-otc package."
        )
    return path


def _dict_entries(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a CFF DICT into (operands, operator) byte strings (CFF spec, section 4)."""
    entries = []
    start = i = 0
    while i < len(data):
        b0 = data[i]
        if b0 <= 21:
            end = i + 2 if b0 == 12 else i + 1
            entries.append((data[start:i], data[i:end]))
            start = i = end
        elif b0 == 28:
            i += 3
        elif b0 == 29:
            i += 5
        elif b0 == 30:  # a real: nibbles up to and including the 0xf terminator
            i += 1
            while data[i] & 0x0F != 0x0F and data[i] >> 4 != 0x0F:
                i += 1
            i += 1
        elif 32 <= b0 <= 246:
            i += 1
        elif 247 <= b0 <= 254:
            i += 2
        else:
            raise ValueError(f"Reserved byte {b0} in a CFF DICT.")
    return entries


def _cff_int(value: int) -> bytes:
    # Always the 5-byte form, so a DICT's size does not depend on the offsets it holds.
    return b"\x1d" + value.to_bytes(4, "big", signed=True)


def _cff_index(items: Sequence[bytes]) -> bytes:
    if not items:
        return b"\x00\x00"
    offsets = [1]
    for item in items:
        offsets.append(offsets[-1] + len(item))
    off_size = (offsets[-1].bit_length() + 7) // 8
    return (
        len(items).to_bytes(2, "big")
        + bytes([off_size])
        + b"".join(o.to_bytes(off_size, "big") for o in offsets)
        + b"".join(items)
    )


@dataclass(frozen=True)
class _Glyph:
    gid: int
    cid: int
    advance: int  # in font units (1000 per em)


class _CjkFont:
    """Noto Sans CJK SC: character lookup, metrics, and CID-keyed CFF subsets."""

    units_per_em = 1000

    def __init__(self) -> None:
        path = _font_path()
        self.path = path
        with ttLib.TTFont(str(path), fontNumber=_SC_FACE, lazy=True) as tt:
            ps_name = tt["name"].getDebugName(6)
            if ps_name != _SC_PS_NAME:
                raise RuntimeError(
                    f"Face {_SC_FACE} of {path} is {ps_name!r}, not {_SC_PS_NAME!r}; the "
                    "noto-cjk-sans-otc package changed its layout."
                )
            self.ps_name: str = ps_name
            order = tt.getGlyphOrder()
            gids = {name: gid for gid, name in enumerate(order)}
            # By code point and by glyph id, rather than by glyph name: smaller.
            self._cmap: dict[int, int] = {
                cp: gids[name] for cp, name in tt["cmap"].getBestCmap().items()
            }
            metrics = tt["hmtx"].metrics
            self._advances = array("H", (metrics[name][0] for name in order))
            del gids, metrics
            self.ascent: int = tt["hhea"].ascent
            self.descent: int = tt["hhea"].descent
            self.cap_height: int = tt["OS/2"].sCapHeight
            raw = bytes(tt.reader["CFF "])

        cff = CFFFontSet()
        cff.decompile(io.BytesIO(raw), None)
        self._top = cff[cff.fontNames[0]]
        registry, ordering, supplement = self._top.ROS
        self._ros = (registry.encode("ascii"), ordering.encode("ascii"), int(supplement))
        self._cid_count = int(self._top.CIDCount)
        self.bbox: list[int] = [int(v) for v in self._top.FontBBox]
        self._fd_select = self._top.FDSelect
        self._charset: list[str] = self._top.charset
        # Each FD's Private DICT, raw, without its local subroutines (subsets carry
        # desubroutinised charstrings).
        self._privates: list[bytes] = []
        for fd in self._top.FDArray:
            size, offset = fd.rawDict["Private"]
            entries = _dict_entries(raw[offset : offset + size])
            self._privates.append(b"".join(ops + op for ops, op in entries if op != _SUBRS_OP))
        self._charstrings: dict[int, bytes] = {}
        # fontTools caches desubroutinised subroutines on shared objects.
        self._lock = threading.Lock()

    def glyph(self, char: str) -> _Glyph:
        """Return the glyph for ``char``; raise LicenceTextUnsupported if there is none."""
        gid = self._cmap.get(ord(char))
        if gid is None:
            raise LicenceTextUnsupported(
                f"The character {char!r} (U+{ord(char):04X}) cannot be shown in a licence "
                "PDF: the embedded font has no glyph for it.",
                metadata={"character": f"U+{ord(char):04X}"},
            )
        return _Glyph(gid=gid, cid=self._cid(gid), advance=self._advances[gid])

    def _cid(self, gid: int) -> int:
        name = self._charset[gid]
        return 0 if name == ".notdef" else int(name.removeprefix("cid"))

    def _charstring(self, gid: int) -> bytes:
        cached = self._charstrings.get(gid)
        if cached is not None:
            return cached
        with self._lock:
            cs, _fd = self._top.CharStrings.getItemAndSelector(self._charset[gid])
            desubroutinizeCharString(cs)
            cs.compile()
            data: bytes = cs.bytecode
            self._charstrings[gid] = data
        return data

    def subset_cff(self, gids: Sequence[int], name: str) -> bytes:
        """Return a CID-keyed CFF font named ``name`` holding .notdef and ``gids``, each
        under its original CID, for embedding as ``/FontFile3 /CIDFontType0C``."""
        glyphs = sorted({0, *gids}, key=self._cid)
        fds = [self._fd_select[g] for g in glyphs]
        used_fds = sorted(set(fds))
        fd_index = {fd: i for i, fd in enumerate(used_fds)}
        privates = [self._privates[fd] for fd in used_fds]

        header = bytes([1, 0, 4, 4])
        name_index = _cff_index([name.encode("ascii")])
        # Strings 391 and 392 (the first non-standard SIDs) are the ROS registry and
        # ordering.
        strings = _cff_index([self._ros[0], self._ros[1]])
        global_subrs = _cff_index([])
        charset = b"\x00" + b"".join(self._cid(g).to_bytes(2, "big") for g in glyphs[1:])
        fd_select = b"\x00" + bytes(fd_index[fd] for fd in fds)
        charstrings = _cff_index([self._charstring(g) for g in glyphs])

        def top_dict(charset_at: int, fd_select_at: int, cs_at: int, fd_array_at: int) -> bytes:
            return b"".join(
                [
                    _cff_int(391) + _cff_int(392) + _cff_int(self._ros[2]) + b"\x0c\x1e",
                    *(_cff_int(v) for v in self.bbox),
                    b"\x05",  # FontBBox
                    _cff_int(self._cid_count) + b"\x0c\x22",  # CIDCount
                    _cff_int(charset_at) + b"\x0f",  # charset
                    _cff_int(fd_select_at) + b"\x0c\x25",  # FDSelect
                    _cff_int(cs_at) + b"\x11",  # CharStrings
                    _cff_int(fd_array_at) + b"\x0c\x24",  # FDArray
                ]
            )

        def font_dict(size: int, offset: int) -> bytes:
            return _cff_int(size) + _cff_int(offset) + b"\x12"  # Private

        top_len = len(_cff_index([top_dict(0, 0, 0, 0)]))
        charset_at = len(header) + len(name_index) + top_len + len(strings) + len(global_subrs)
        fd_select_at = charset_at + len(charset)
        cs_at = fd_select_at + len(fd_select)
        fd_array_at = cs_at + len(charstrings)
        private_at = fd_array_at + len(_cff_index([font_dict(0, 0)] * len(privates)))
        font_dicts = []
        for private in privates:
            font_dicts.append(font_dict(len(private), private_at))
            private_at += len(private)
        return b"".join(
            [
                header,
                name_index,
                _cff_index([top_dict(charset_at, fd_select_at, cs_at, fd_array_at)]),
                strings,
                global_subrs,
                charset,
                fd_select,
                charstrings,
                _cff_index(font_dicts),
                *privates,
            ]
        )


_font_lock = threading.Lock()
_font_instance: _CjkFont | None = None


def _font() -> _CjkFont:
    global _font_instance  # the process-wide parsed font
    if _font_instance is None:
        with _font_lock:
            if _font_instance is None:
                _font_instance = _CjkFont()
    return _font_instance


# ---------------------------------------------------------------------------------------
# Text set in the embedded font.


class _TextSetter:
    """Turns strings into content-stream text and remembers the glyphs used."""

    def __init__(self, font: _CjkFont) -> None:
        self.font = font
        self.used: dict[int, tuple[_Glyph, str]] = {}  # by CID

    def glyphs(self, text: str) -> list[_Glyph]:
        out = []
        for char in text:
            glyph = self.font.glyph(char)
            self.used.setdefault(glyph.cid, (glyph, char))
            out.append(glyph)
        return out

    def width(self, text: str, size: float, spacing: float = 0.0) -> float:
        glyphs = self.glyphs(text)
        units = sum(g.advance for g in glyphs)
        return units * size / self.font.units_per_em + spacing * max(len(glyphs) - 1, 0)

    def show(
        self,
        text: str,
        x: float,
        y: float,
        size: float,
        *,
        spacing: float = 0.0,
        gray: float = 0.0,
    ) -> bytes:
        hexed = "".join(f"{g.cid:04x}" for g in self.glyphs(text))
        return (
            f"BT /F1 {size:g} Tf {spacing:.3f} Tc {gray:g} g "
            f"1 0 0 1 {x:.2f} {y:.2f} Tm <{hexed}> Tj ET\n"
        ).encode("ascii")


# Closing marks (incl. right quotation marks U+201D, U+2019) never start a line.
_NO_LINE_START = set("，。、；：？！）》」』】〉\u201d\u2019,.;:?!)%")
_WORD = re.compile(r"[A-Za-z0-9@#&_\-+./:%]+|\s+|.", re.DOTALL)


def _fit(setter: _TextSetter, text: str, size: float, width: float) -> int:
    """Return how many leading characters of ``text`` fit in ``width`` (at least one)."""
    used = 0.0
    for i, glyph in enumerate(setter.glyphs(text)):
        used += glyph.advance * size / setter.font.units_per_em
        if used > width:
            return max(i, 1)
    return len(text)


def _wrap(setter: _TextSetter, text: str, size: float, width: float) -> list[str]:
    """Break ``text`` into lines no wider than ``width``: between any two CJK
    characters, at spaces, and inside a Latin word only if it alone overflows a line.
    Closing punctuation hangs past the margin rather than start a line."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for token in _WORD.findall(paragraph):
            if token.isspace():
                if line and setter.width(line + token, size) > width:
                    lines.append(line)
                    line = ""
                elif line:
                    line += token
                continue
            candidate = line + token
            if setter.width(candidate, size) <= width or (line and token in _NO_LINE_START):
                line = candidate
                continue
            if line:
                lines.append(line.rstrip())
            line = token
            while len(line) > 1 and setter.width(line, size) > width:
                cut = _fit(setter, line, size, width)
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line.rstrip())
    return lines


# ---------------------------------------------------------------------------------------
# The seal image: a red round 电子印章 with the department's name along the arc.

_SEAL_PIXELS = 600
_SEAL_RED = (214, 24, 32)


@lru_cache(maxsize=8)
def _seal_font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_font().path), size, index=_SC_FACE)


def _star(cx: float, cy: float, outer: float) -> list[tuple[float, float]]:
    inner = outer * 0.382
    points = []
    for i in range(10):
        r = outer if i % 2 == 0 else inner
        a = math.radians(90 + 36 * i)
        points.append((cx + r * math.cos(a), cy - r * math.sin(a)))
    return points


def _draw_seal_mask(name: str) -> Image.Image:
    """Return the seal's shape as an 8-bit coverage mask (255 = ink)."""
    s = _SEAL_PIXELS
    mask = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(mask)
    margin = s * 0.02
    ring = round(s * 0.035)
    draw.ellipse((margin, margin, s - margin, s - margin), outline=255, width=ring)
    c = s / 2
    draw.polygon(_star(c, c, s * 0.15), fill=255)

    chars = [ch for ch in name if not ch.isspace()]
    # Characters sit upright along the top, spread over at most 250 degrees.
    inner_radius = c - margin - ring
    size = s * 0.125
    text_radius = inner_radius - size * 0.72
    step = size * 1.08 / text_radius
    span = step * len(chars)
    max_span = math.radians(250)
    if span > max_span:
        step = max_span / len(chars)
        size = step * text_radius / 1.08
        text_radius = inner_radius - size * 0.72
        span = max_span
    font = _seal_font(round(size))
    tile_size = round(size * 1.6)
    for i, ch in enumerate(chars):
        angle = math.pi / 2 + span / 2 - (i + 0.5) * step
        tile = Image.new("L", (tile_size, tile_size), 0)
        # A light stroke: seal engravings are bolder than the Regular face.
        ImageDraw.Draw(tile).text(
            (tile_size / 2, tile_size / 2),
            ch,
            fill=255,
            font=font,
            anchor="mm",
            stroke_width=max(1, round(size * 0.018)),
            stroke_fill=255,
        )
        tile = tile.rotate(math.degrees(angle - math.pi / 2), resample=Image.Resampling.BICUBIC)
        x = c + text_radius * math.cos(angle) - tile_size / 2
        y = c - text_radius * math.sin(angle) - tile_size / 2
        mask.paste(255, (round(x), round(y)), tile)
    return mask


@dataclass(frozen=True)
class _SealImage:
    size: int
    rgb: bytes  # Flate-compressed
    alpha: bytes  # Flate-compressed


@lru_cache(maxsize=256)
def _seal_image(name: str) -> _SealImage:
    mask = _draw_seal_mask(name)
    rgb = bytes(_SEAL_RED) * (mask.width * mask.height)
    return _SealImage(mask.width, zlib.compress(rgb, 9), zlib.compress(mask.tobytes(), 6))


# ---------------------------------------------------------------------------------------
# Page layout.

_A4 = (595.276, 841.890)
_LEFT = 74.0
_RIGHT = _A4[0] - 74.0
_TABLE_TOP = 668.0
_TABLE_BOTTOM = 262.0  # the footer (QR, issuer, seal) lies below
_TYPE_SIZES = (12.0, 11.0, 10.0, 9.0, 8.0)
_FRAME = (0.62, 0.13, 0.11)
_SEAL_DIAMETER = 119.0  # 42 mm, the usual size of an official seal


def _chinese_date(d: date) -> str:
    return f"{d.year}年{d.month}月{d.day}日"


def _rows(document: LicenceDocument) -> list[tuple[str, str]]:
    until = "长期" if document.valid_until is None else _chinese_date(document.valid_until)
    return [
        ("持证主体", document.holder_name),
        ("主体代码", document.holder_id),
        *document.rows,
        ("有效期限", f"{_chinese_date(document.valid_from)} 至 {until}"),
    ]


@dataclass
class _Page:
    setter: _TextSetter
    ops: list[bytes] = field(default_factory=list)

    def text(self, text: str, x: float, y: float, size: float, **kw: float) -> None:
        self.ops.append(self.setter.show(text, x, y, size, **kw))

    def centred(self, text: str, cx: float, y: float, size: float, spacing: float = 0.0) -> None:
        x = cx - self.setter.width(text, size, spacing) / 2
        self.text(text, x, y, size, spacing=spacing)

    def right(self, text: str, right: float, y: float, size: float) -> None:
        self.text(text, right - self.setter.width(text, size), y, size)


def _layout_table(
    setter: _TextSetter, rows: list[tuple[str, str]], size: float
) -> list[bytes] | None:
    """Return the table's drawing operations at type ``size``, or None if it does not
    fit above the footer."""
    spread = 4 * size  # short labels are spread over four ems, as in 名　　称
    label_width = min(max(spread, *(setter.width(label, size) for label, _ in rows)), 8 * size)
    label_x = _LEFT + 8
    value_x = label_x + label_width + size * 1.5
    value_width = _RIGHT - 8 - value_x
    line_height = size * 1.6
    lowest = _TABLE_BOTTOM + size * 0.3  # room for descenders
    ops: list[bytes] = []
    y = _TABLE_TOP - size
    for label, value in rows:
        label_lines = _wrap(setter, label, size, label_width)
        value_lines = _wrap(setter, value, size, value_width)
        height = max(len(label_lines), len(value_lines))
        if y - (height - 1) * line_height < lowest:
            return None
        for i, line in enumerate(label_lines):
            natural = setter.width(line, size)
            spacing = 0.0
            if len(label_lines) == 1 and len(line) > 1 and natural < spread:
                spacing = (spread - natural) / (len(line) - 1)
            ops.append(
                setter.show(line, label_x, y - i * line_height, size, spacing=spacing, gray=0.35)
            )
        for i, line in enumerate(value_lines):
            ops.append(setter.show(line, value_x, y - i * line_height, size, gray=0.05))
        y -= height * line_height + size * 0.7
    return ops


def _fitted_size(
    setter: _TextSetter, text: str, size: float, width: float, spacing_em: float = 0.0
) -> float:
    """Return ``size``, or the smaller size at which ``text`` fits in ``width``."""
    natural = setter.width(text, size, spacing_em * size)
    return size if natural <= width else size * width / natural


def _qr_ops(text: str, x: float, y: float) -> tuple[bytes, float]:
    """Return the QR code's vector drawing with its lower left at (x, y), and its side."""
    try:
        qr = segno.make(text, error="m", micro=False)
    except segno.DataOverflowError as e:
        raise LicenceTooLong(
            f"The QR text ({len(text)} characters) does not fit in a QR code.",
            metadata={"part": "qr"},
        ) from e
    matrix = qr.matrix
    n = len(matrix)
    module = min(max(n * 1.9, 96.0), 150.0) / n
    rects = []
    for row_index, row in enumerate(matrix):
        top = y + (n - row_index) * module
        col = 0
        while col < n:
            if not row[col]:
                col += 1
                continue
            start = col
            while col < n and row[col]:
                col += 1
            # A hair of overlap so that anti-aliased rasterisers leave no seams.
            rects.append(
                f"{x + start * module:.3f} {top - module - 0.02:.3f} "
                f"{(col - start) * module + 0.02:.3f} {module + 0.04:.3f} re"
            )
    return ("0 g\n" + "\n".join(rects) + "\nf\n").encode("ascii"), n * module


def _frame_ops() -> bytes:
    w, h = _A4
    r, g, b = _FRAME
    return (
        f"q {r} {g} {b} RG 2.4 w 28 28 {w - 56:.2f} {h - 56:.2f} re S "
        f"0.6 w 34 34 {w - 68:.2f} {h - 68:.2f} re S Q\n"
    ).encode("ascii")


def _page_content(document: LicenceDocument, setter: _TextSetter) -> bytes:
    page = _Page(setter)
    page.ops.append(_frame_ops())
    cx = _A4[0] / 2
    spacing_em = 0.5 if len(document.title) <= 6 else 0.1
    title_size = _fitted_size(setter, document.title, 30.0, _RIGHT - _LEFT, spacing_em)
    page.centred(document.title, cx, 738, title_size, spacing=title_size * spacing_em)
    page.centred("电子证照", cx, 712, 10.5, spacing=3)
    number = f"证照编号：{document.number}"
    page.text(number, _LEFT + 8, 684, _fitted_size(setter, number, 10.5, _RIGHT - _LEFT - 16))
    page.ops.append(f"q 0.6 w 0.55 G {_LEFT} 678 m {_RIGHT} 678 l S Q\n".encode("ascii"))

    rows = _rows(document)
    for size in _TYPE_SIZES:
        table = _layout_table(setter, rows, size)
        if table is not None:
            page.ops.extend(table)
            break
    else:
        raise LicenceTooLong(
            f"The licence {document.number} has too much text for one A4 page, even at "
            f"{_TYPE_SIZES[-1]:g} pt; shorten its longest values.",
            metadata={"part": "rows"},
        )
    page.ops.append(f"q 0.6 w 0.55 G {_LEFT} 250 m {_RIGHT} 250 l S Q\n".encode("ascii"))

    qr_x = _LEFT + 4
    qr, side = _qr_ops(document.qr_text, qr_x, 86)
    page.ops.append(qr)
    page.centred("扫码核验", qr_x + side / 2, 70, 9, spacing=2)

    # The issuer and date, right-aligned beside the QR code.
    right = _RIGHT - 8
    issuer = f"发证机关：{document.issuer_name}"
    issued = _chinese_date(document.issued)
    issuer_size = _fitted_size(setter, issuer, 12.0, right - (qr_x + side + 16))
    page.right(issuer, right, 168, issuer_size)
    page.right(issued, right, 144, 12)
    # The seal is stamped over the date, as on paper; multiplied, so that the black
    # text under the red ink stays legible.
    seal_cx = min(right - setter.width(issued, 12) / 2, _RIGHT - _SEAL_DIAMETER / 2 - 4)
    seal_x = seal_cx - _SEAL_DIAMETER / 2
    seal_y = 156 - _SEAL_DIAMETER / 2
    page.ops.append(
        (
            f"q /Ink gs {_SEAL_DIAMETER} 0 0 {_SEAL_DIAMETER} {seal_x:.2f} {seal_y:.2f} cm "
            "/Seal Do Q\n"
        ).encode("ascii")
    )
    return b"".join(page.ops)


# ---------------------------------------------------------------------------------------
# PDF objects. The document is small and fixed in shape, so it is written directly.


def _pdf_text(text: str) -> bytes:
    """A PDF text string: UTF-16BE with BOM, as a hex string."""
    return b"<feff" + text.encode("utf-16-be").hex().encode("ascii") + b">"


def _stream(entries: bytes, data: bytes) -> bytes:
    return b"<<" + entries + b" /Length %d>>\nstream\n" % len(data) + data + b"\nendstream"


def _to_unicode(used: dict[int, tuple[_Glyph, str]]) -> bytes:
    lines = [
        "/CIDInit /ProcSet findresource begin 12 dict begin begincmap",
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def",
        "/CMapName /Adobe-Identity-UCS def /CMapType 2 def",
        "1 begincodespacerange <0000> <FFFF> endcodespacerange",
    ]
    pairs = sorted((cid, char) for cid, (_g, char) in used.items())
    for start in range(0, len(pairs), 100):
        chunk = pairs[start : start + 100]
        lines.append(f"{len(chunk)} beginbfchar")
        lines.extend(f"<{cid:04x}> <{char.encode('utf-16-be').hex()}>" for cid, char in chunk)
        lines.append("endbfchar")
    lines.append("endcmap CMapName currentdict /CMap defineresource pop end end")
    return "\n".join(lines).encode("ascii")


def _subset_tag(cids: Sequence[int]) -> str:
    digest = hashlib.sha256(b",".join(b"%d" % c for c in sorted(cids))).digest()
    return "".join(chr(ord("A") + b % 26) for b in digest[:6])


def _assemble(objects: list[bytes], info: int, root: int, file_id: bytes) -> bytes:
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    hex_id = file_id.hex().encode("ascii")
    out += b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R /ID [<%s> <%s>] >>\n" % (
        len(objects) + 1,
        root,
        info,
        hex_id,
        hex_id,
    )
    out += b"startxref\n%d\n%%%%EOF\n" % xref_at
    return bytes(out)


def render_licence(document: LicenceDocument) -> bytes:
    """Return ``document`` rendered as a one-page A4 PDF (unsealed), with the CJK font
    embedded as a subset. The same document always renders to the same bytes.

    Raises LicenceTextUnsupported if a text holds a character the font cannot show;
    LicenceTooLong if the rows do not fit on the page or ``qr_text`` in a QR code.
    """
    font = _font()
    setter = _TextSetter(font)
    content = _page_content(document, setter)
    seal = _seal_image(document.issuer_name)

    used = setter.used
    tag = _subset_tag(list(used))
    base_font = f"{tag}+{font.ps_name}"
    cff = font.subset_cff([g.gid for g, _c in used.values()], base_font)
    widths = " ".join(f"{cid} [{g.advance}]" for cid, (g, _c) in sorted(used.items()))
    x0, y0, x1, y1 = font.bbox
    w, h = _A4

    # Object numbers, fixed by the page's shape.
    catalog, pages, page, contents, type0, cid_font, descriptor, font_file = range(1, 9)
    to_unicode, seal_rgb, seal_alpha, info = range(9, 13)
    objects = [
        b"<< /Type /Catalog /Pages %d 0 R /Lang (zh-CN) "
        b"/ViewerPreferences << /DisplayDocTitle true >> >>" % pages,
        b"<< /Type /Pages /Kids [%d 0 R] /Count 1 >>" % page,
        (
            f"<< /Type /Page /Parent {pages} 0 R /MediaBox [0 0 {w} {h}] "
            f"/Resources << /Font << /F1 {type0} 0 R >> /XObject << /Seal {seal_rgb} 0 R >> "
            "/ExtGState << /Ink << /Type /ExtGState /BM /Multiply >> >> "
            f"/ProcSet [/PDF /Text /ImageC] >> /Contents {contents} 0 R >>"
        ).encode("ascii"),
        _stream(b"/Filter /FlateDecode", zlib.compress(content, 6)),
        (
            f"<< /Type /Font /Subtype /Type0 /BaseFont /{base_font}-Identity-H "
            f"/Encoding /Identity-H /DescendantFonts [{cid_font} 0 R] "
            f"/ToUnicode {to_unicode} 0 R >>"
        ).encode("ascii"),
        (
            f"<< /Type /Font /Subtype /CIDFontType0 /BaseFont /{base_font} "
            f"/CIDSystemInfo << /Registry (Adobe) /Ordering (Identity) /Supplement 0 >> "
            f"/FontDescriptor {descriptor} 0 R /DW 1000 /W [{widths}] >>"
        ).encode("ascii"),
        (
            f"<< /Type /FontDescriptor /FontName /{base_font} /Flags 4 "
            f"/FontBBox [{x0} {y0} {x1} {y1}] /ItalicAngle 0 /Ascent {font.ascent} "
            f"/Descent {font.descent} /CapHeight {font.cap_height} /StemV 80 "
            f"/FontFile3 {font_file} 0 R >>"
        ).encode("ascii"),
        _stream(b"/Subtype /CIDFontType0C /Filter /FlateDecode", zlib.compress(cff, 6)),
        _stream(b"/Filter /FlateDecode", zlib.compress(_to_unicode(used), 6)),
        _stream(
            b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB "
            b"/BitsPerComponent 8 /Interpolate true /SMask %d 0 R /Filter /FlateDecode"
            % (seal.size, seal.size, seal_alpha),
            seal.rgb,
        ),
        _stream(
            b"/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
            b"/BitsPerComponent 8 /Interpolate true /Filter /FlateDecode" % (seal.size, seal.size),
            seal.alpha,
        ),
        b"<< /Title "
        + _pdf_text(f"{document.title} {document.number}")
        + b" /Author "
        + _pdf_text(document.issuer_name)
        + b" /Producer (Tongban) >>",
    ]
    assert len(objects) == info
    file_id = hashlib.sha256(b"".join(objects)).digest()[:16]
    return _assemble(objects, info=info, root=catalog, file_id=file_id)


def render_and_seal(
    document: LicenceDocument,
    key: PrivateKey | Signer,
    chain: Sequence[x509.Certificate],
    *,
    field_name: str = "Seal",
    reason: str | None = "电子证照签章",
    location: str | None = None,
    timestamper: str | TimeStamper | None = None,
    now: datetime | None = None,
) -> bytes:
    """Return ``document`` rendered (``render_licence``) and sealed as PAdES with the
    issuing department's seal key (``tongban.signing.pades.seal_pdf``; B-T when a
    timestamper is given).

    Raises what ``render_licence`` and ``seal_pdf`` raise.
    """
    return seal_pdf(
        render_licence(document),
        key=key,
        chain=chain,
        field_name=field_name,
        reason=reason,
        location=location,
        timestamper=timestamper,
        now=now,
    )


async def render_and_seal_async(
    document: LicenceDocument,
    key: PrivateKey | Signer,
    chain: Sequence[x509.Certificate],
    *,
    field_name: str = "Seal",
    reason: str | None = "电子证照签章",
    location: str | None = None,
    timestamper: str | TimeStamper | None = None,
    now: datetime | None = None,
) -> bytes:
    """Return ``document`` rendered and sealed, like ``render_and_seal``, for callers in
    an event loop. Rendering is CPU-bound (a few milliseconds) and runs inline; the
    sealing awaits ``seal_pdf_async`` (and the TSA, if any).

    Raises what ``render_licence`` and ``seal_pdf_async`` raise.
    """
    return await seal_pdf_async(
        render_licence(document),
        key=key,
        chain=chain,
        field_name=field_name,
        reason=reason,
        location=location,
        timestamper=timestamper,
        now=now,
    )
