"""Licence PDFs: rendered, read back by independent tools (poppler's pdftotext, pdffonts
and pdftoppm, pyHanko's reader, fontTools, zxing-cpp), sealed and verified.

Needs Debian's poppler-utils (pdftotext, pdffonts, pdftoppm).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import shutil
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import zxingcpp
from fontTools.cffLib import CFFFontSet  # type: ignore[import-untyped]
from fontTools.pens.recordingPen import RecordingPen  # type: ignore[import-untyped]
from fontTools.ttLib import TTFont  # type: ignore[import-untyped]
from PIL import Image
from pyhanko.pdf_utils.reader import PdfFileReader

from tongban.licence.render import (
    LicenceDocument,
    LicenceTextUnsupported,
    LicenceTooLong,
    render_and_seal,
    render_and_seal_async,
    render_licence,
)
from tongban.signing import create_root_ca, generate_private_key, issue_seal_certificate
from tongban.signing.pades import verify_sealed_pdf, verify_sealed_pdf_async

NOW = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)
CA_KEY = generate_private_key()
CA = create_root_ca(common_name="Test Exchange Root", key=CA_KEY, now=NOW)
DEPT_NAME = "深圳市市场监督管理局"
SEAL_KEY = generate_private_key()
SEAL_CERT = issue_seal_certificate(
    ca_cert=CA,
    ca_key=CA_KEY,
    code="market-supervision",
    name=DEPT_NAME,
    public_key=SEAL_KEY.public_key(),
    now=NOW,
)
# The shape of a real TB1 string: base45 after the prefix, a few hundred characters.
QR_TEXT = "TB1:" + "NCFOXN%TS3DH0YOJ58S S-W5HDC *M0II5EQN:6$Q1 R1YVO$ZG9 A:6B.GJ8J2-8Q" * 6
SAMPLE_PNG = Path("/tmp/tongban-licence-sample.png")  # for a person to look at

DOCUMENT = LicenceDocument(
    title="营业执照",
    number="91440300MA5F8ABC1X-0001",
    holder_name="深圳市通办科技有限公司",
    holder_id="91440300MA5F8ABC1X",
    rows=[
        ("类型", "有限责任公司（自然人投资或控股）"),
        ("法定代表人", "张三"),
        ("注册资本", "人民币壹仟万元整"),
        ("成立日期", "2020年3月15日"),
        ("住所", "深圳市南山区粤海街道科技园社区科苑路15号科兴科学园B栋4单元1201室"),
        (
            "经营范围",
            "一般经营项目是：计算机软硬件的技术开发、技术咨询、技术服务；信息系统集成服务；"
            "数据处理和存储支持服务。Software development and data services (B2G).",
        ),
    ],
    issuer_name=DEPT_NAME,
    issued=date(2025, 6, 1),
    valid_from=date(2020, 3, 15),
    valid_until=None,
    qr_text=QR_TEXT,
)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is required: install Debian's poppler-utils (apt-get install poppler-utils)."
        )
    return path


def _pdftotext(pdf: bytes, tmp_path: Path) -> str:
    src = tmp_path / "licence.pdf"
    src.write_bytes(pdf)
    out = subprocess.run(
        [_tool("pdftotext"), "-layout", "-enc", "UTF-8", str(src), "-"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out.stdout.decode()


def _rasterise(pdf: bytes, tmp_path: Path, dpi: int = 200) -> Path:
    src = tmp_path / "licence.pdf"
    src.write_bytes(pdf)
    subprocess.run(
        [
            _tool("pdftoppm"),
            "-r",
            str(dpi),
            "-png",
            "-singlefile",
            str(src),
            str(tmp_path / "page"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return tmp_path / "page.png"


def _font_file(pdf: bytes) -> tuple[str, str, bytes]:
    """Return (BaseFont of the CIDFont, /Subtype of its font file, the font program)."""
    reader = PdfFileReader(io.BytesIO(pdf))
    page = reader.root["/Pages"]["/Kids"][0]
    type0 = page["/Resources"]["/Font"]["/F1"]
    assert type0["/Subtype"] == "/Type0"
    assert type0["/Encoding"] == "/Identity-H"
    assert "/ToUnicode" in type0
    cid_font = type0["/DescendantFonts"][0]
    descriptor = cid_font["/FontDescriptor"]
    assert "/FontFile2" not in descriptor
    font_file = descriptor["/FontFile3"]
    return str(cid_font["/BaseFont"]), str(font_file["/Subtype"]), font_file.data


def test_chinese_text_is_extractable(tmp_path: Path) -> None:
    text = _pdftotext(render_licence(DOCUMENT), tmp_path)
    compact = re.sub(r"\s+", "", text)
    for expected in (
        "营业执照",
        "证照编号：91440300MA5F8ABC1X-0001",
        "持证主体深圳市通办科技有限公司",
        "主体代码91440300MA5F8ABC1X",
        "法定代表人张三",
        "有限责任公司（自然人投资或控股）",
        "深圳市南山区粤海街道科技园社区科苑路15号科兴科学园B栋4单元1201室",
        "Softwaredevelopmentanddataservices(B2G).",
        "有效期限2020年3月15日至长期",
        "发证机关：深圳市市场监督管理局",
        "2025年6月1日",
        "扫码核验",
    ):
        assert expected in compact


def test_characters_outside_the_bmp_are_extractable(tmp_path: Path) -> None:
    document = dataclasses.replace(DOCUMENT, holder_name="𠮷野家（深圳）餐饮有限公司")
    compact = re.sub(r"\s+", "", _pdftotext(render_licence(document), tmp_path))
    assert "持证主体𠮷野家（深圳）餐饮有限公司" in compact


def test_validity_end_date_is_shown(tmp_path: Path) -> None:
    document = dataclasses.replace(DOCUMENT, valid_until=date(2030, 3, 14))
    compact = re.sub(r"\s+", "", _pdftotext(render_licence(document), tmp_path))
    assert "有效期限2020年3月15日至2030年3月14日" in compact


def test_font_is_embedded_as_a_cff_subset(tmp_path: Path) -> None:
    pdf = render_licence(DOCUMENT)
    base_font, subtype, program = _font_file(pdf)
    assert re.fullmatch(r"/[A-Z]{6}\+NotoSansCJKsc-Regular", base_font)
    assert subtype == "/CIDFontType0C"
    assert len(program) < 100_000  # a subset, not the 15 MB font program
    src = tmp_path / "licence.pdf"
    src.write_bytes(pdf)
    fonts = subprocess.run(
        [_tool("pdffonts"), str(src)], check=True, capture_output=True, timeout=60
    ).stdout.decode()
    (row,) = [line for line in fonts.splitlines() if "NotoSansCJKsc" in line]
    # name, type "CID Type 0C", encoding, then emb / sub / uni: all three yes.
    assert re.search(r"CID Type 0C\s+Identity-H\s+yes\s+yes\s+yes", row), fonts


def test_subset_glyphs_are_the_original_outlines() -> None:
    _, _, program = _font_file(render_licence(DOCUMENT))
    subset = CFFFontSet()
    subset.decompile(io.BytesIO(program), None)
    sub_top = subset[subset.fontNames[0]]
    assert sub_top.ROS == ("Adobe", "Identity", 0)
    names = sub_top.charset
    distinct = set(re.sub(r"\s", "", "".join(DOCUMENT.title + DOCUMENT.holder_name)))
    assert len(names) < 250  # .notdef and the page's distinct characters only

    with TTFont(str(Path(_noto_path())), fontNumber=2, lazy=True) as tt:
        cmap = tt["cmap"].getBestCmap()
        original = tt["CFF "].cff
        orig_top = original[original.fontNames[0]]
        for char in distinct:
            name = cmap[ord(char)]
            assert name in names
            want, got = RecordingPen(), RecordingPen()
            orig_top.CharStrings[name].draw(want)
            sub_top.CharStrings[name].draw(got)
            assert got.value == want.value, char


def _noto_path() -> str:
    from importlib import resources

    return str(resources.files("noto_cjk_sans_otc").joinpath("NotoSansCJK-Regular.ttc"))


def test_qr_code_reads_back_and_the_seal_is_red_and_round(tmp_path: Path) -> None:
    png = _rasterise(render_licence(DOCUMENT), tmp_path)
    with Image.open(png) as page:
        codes = zxingcpp.read_barcodes(page)
        assert [code.text for code in codes] == [QR_TEXT]
        assert codes[0].format == zxingcpp.BarcodeFormat.QRCode

        # The seal is the only red on the page apart from the frame: find its box in
        # the lower right, inside the frame.
        rgb = page.convert("RGB")
        width, height = rgb.size
        box = (width // 2, height * 2 // 3, width - width // 12, height - height // 20)
        region = rgb.crop(box)
        red = [
            (x, y)
            for y in range(region.height)
            for x in range(region.width)
            if _is_red(region.getpixel((x, y)))
        ]
    assert len(red) > 2000
    xs = [x for x, _ in red]
    ys = [y for _, y in red]
    seal_w, seal_h = max(xs) - min(xs), max(ys) - min(ys)
    assert abs(seal_w - seal_h) <= 0.05 * seal_w  # round
    assert seal_w == pytest.approx(42 / 25.4 * 200, rel=0.1)  # 42 mm across at 200 dpi

    # Keep one sample for a person to look at (atomically: tests may run in parallel).
    partial = SAMPLE_PNG.with_name(f".{SAMPLE_PNG.name}.{os.getpid()}")
    shutil.copyfile(png, partial)
    partial.replace(SAMPLE_PNG)


def _is_red(pixel: object) -> bool:
    assert isinstance(pixel, tuple)
    r, g, b = pixel[:3]
    return bool(r > 170 and g < 110 and b < 110)


def test_sealed_licence_verifies(tmp_path: Path) -> None:
    sealed = render_and_seal(DOCUMENT, SEAL_KEY, [SEAL_CERT, CA], now=NOW)
    report = verify_sealed_pdf(sealed, roots=[CA], now=NOW + timedelta(days=1))
    seal = report.latest
    assert seal.department_code == "market-supervision"
    assert seal.signer_name == DEPT_NAME
    assert seal.covers_whole_document
    assert seal.pades_level == "B-B"
    assert "营业执照" in re.sub(r"\s+", "", _pdftotext(sealed, tmp_path))


async def test_sealed_licence_verifies_in_an_event_loop() -> None:
    sealed = await render_and_seal_async(DOCUMENT, SEAL_KEY, [SEAL_CERT], now=NOW)
    report = await verify_sealed_pdf_async(sealed, roots=[CA], now=NOW)
    assert report.latest.department_code == "market-supervision"


def test_rendering_is_deterministic() -> None:
    assert render_licence(DOCUMENT) == render_licence(DOCUMENT)
    other = dataclasses.replace(DOCUMENT, holder_name="广州市通办数据有限公司")
    assert render_licence(other) != render_licence(DOCUMENT)


def test_long_values_wrap_and_all_text_survives(tmp_path: Path) -> None:
    scope = "；".join(f"第{i}项经营活动：数据共享与电子证照服务" for i in range(12))
    word = "https://data.gov.example/catalogue/" + "x" * 80
    document = dataclasses.replace(DOCUMENT, rows=[("经营范围", scope), ("网址", word)])
    text = _pdftotext(render_licence(document), tmp_path)
    compact = re.sub(r"\s+", "", text)
    assert scope in compact
    assert word in compact
    # It was wrapped: the scope spans several lines, and no word runs past the frame.
    assert sum("经营活动" in line for line in text.splitlines()) >= 3
    assert max(_right_edges(tmp_path / "licence.pdf")) < 595.276 - 60


def test_long_title_labels_and_issuer_stay_inside_the_page(tmp_path: Path) -> None:
    document = dataclasses.replace(
        DOCUMENT,
        title="中华人民共和国食品经营许可证（电子证照副本）",
        issuer_name="广东省深圳市南山区人民政府行政审批服务管理局",
        rows=[("统一社会信用代码（注册号）及其他编码", "91440300MA5F8ABC1X")],
    )
    text = _pdftotext(render_licence(document), tmp_path)
    compact = re.sub(r"\s+", "", text)
    assert document.title in compact
    assert "发证机关：广东省深圳市南山区人民政府行政审批服务管理局" in compact
    # The long label wraps within its column; the value sits on its first line.
    assert "统一社会信用代码91440300MA5F8ABC1X（注册号）及其他编码" in compact
    assert max(_right_edges(tmp_path / "licence.pdf")) < 595.276 - 60


def _right_edges(pdf_path: Path) -> list[float]:
    """The right edge of every word poppler finds on the page, in points."""
    boxes = subprocess.run(
        [_tool("pdftotext"), "-bbox", str(pdf_path), "-"],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout.decode()
    edges = [float(x) for x in re.findall(r'xMax="([0-9.]+)"', boxes)]
    assert len(edges) > 10
    return edges


def test_unsupported_character_is_refused() -> None:
    with pytest.raises(LicenceTextUnsupported) as info:
        render_licence(dataclasses.replace(DOCUMENT, holder_name="通办\x07科技"))
    assert info.value.reason == "LICENCE_TEXT_UNSUPPORTED"
    assert info.value.metadata["character"] == "U+0007"
    with pytest.raises(LicenceTextUnsupported):
        render_licence(dataclasses.replace(DOCUMENT, rows=[("备注", "\ue000")]))


def test_too_much_text_is_refused() -> None:
    rows = [(f"事项{i}", "电子证照数据共享服务" * 8) for i in range(40)]
    with pytest.raises(LicenceTooLong) as info:
        render_licence(dataclasses.replace(DOCUMENT, rows=rows))
    assert info.value.reason == "LICENCE_TOO_LONG"
    assert info.value.metadata == {"part": "rows"}
    with pytest.raises(LicenceTooLong) as info:
        render_licence(dataclasses.replace(DOCUMENT, qr_text="TB1:" + "A" * 5000))
    assert info.value.metadata == {"part": "qr"}


def test_document_is_checked() -> None:
    with pytest.raises(ValueError, match="valid_until"):
        dataclasses.replace(DOCUMENT, valid_until=date(2019, 1, 1))
    with pytest.raises(ValueError, match="title"):
        dataclasses.replace(DOCUMENT, title=" ")
    assert isinstance(DOCUMENT.rows, tuple)
