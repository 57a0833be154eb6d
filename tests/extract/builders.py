"""Fixture builders: messages and documents of every format, built in memory for the tests."""

from __future__ import annotations

import email
import email.policy
import io
import zipfile
from email.message import Message
from email.mime.application import MIMEApplication
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import docx
import openpyxl
from openpyxl.comments import Comment
from openpyxl.workbook.defined_name import DefinedName
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas

from relayguard.config import ScanSettings
from relayguard.decision import Finding
from relayguard.detect import scan_message

NHS = "4366141345"  # passes modulus 11 (the corpus's number)
NHS_SPACED = "436 614 1345"


def with_check(nine: str) -> str | None:
    """``nine`` digits plus their modulus 11 check digit, or None when no check digit exists."""
    total = sum(int(d) * w for d, w in zip(nine, range(10, 1, -1), strict=True))
    check = 11 - total % 11
    check = 0 if check == 11 else check
    return None if check == 10 else nine + str(check)


def valid_numbers(prefix: str, n: int) -> list[str]:
    """``n`` distinct valid ten-digit numbers starting with ``prefix``."""
    out: list[str] = []
    i = 0
    while len(out) < n:
        number = with_check(f"{prefix}{i:0{9 - len(prefix)}d}")
        if number:
            out.append(number)
        i += 1
    return out


def parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def message(body: str = "Hello", *, html: str | None = None,
            attachments: tuple[tuple[str, str, bytes], ...] = (), subject: str = "Test") -> Message:
    """A message with a text body (and HTML alternative) and (filename, ctype, bytes) attachments."""
    outer = MIMEMultipart("mixed")
    outer["From"], outer["To"], outer["Subject"] = "gp@example.nhs.uk", "someone@example.com", subject
    if html is not None:
        alt = MIMEMultipart("alternative")
        alt.attach(MIMEText(body, "plain", "utf-8"))
        alt.attach(MIMEText(html, "html", "utf-8"))
        outer.attach(alt)
    else:
        outer.attach(MIMEText(body, "plain", "utf-8"))
    for filename, ctype, data in attachments:
        maintype, subtype = ctype.split("/", 1)
        part = MIMEText(data.decode(), subtype) if maintype == "text" else MIMEApplication(data, subtype)
        part.replace_header("Content-Type", ctype)
        part.add_header("Content-Disposition", "attachment", filename=filename)
        outer.attach(part)
    return parse(outer.as_bytes())


def forwarded(inner: Message, *, as_octet_stream: bool = False) -> Message:
    """A message carrying ``inner`` as message/rfc822 (or as an .eml octet-stream attachment)."""
    outer = MIMEMultipart("mixed")
    outer["From"], outer["To"], outer["Subject"] = "gp@example.nhs.uk", "x@example.com", "Fwd"
    outer.attach(MIMEText("See below.", "plain"))
    if as_octet_stream:
        part: Message = MIMEApplication(inner.as_bytes(), "octet-stream")
    else:
        part = MIMEMessage(inner)
    part.add_header("Content-Disposition", "attachment", filename="fwd.eml")
    outer.attach(part)
    return parse(outer.as_bytes())


def scan(msg: Message, **limits: float) -> list[Finding]:
    return scan_message(msg, limits=ScanSettings(**limits))


def scan_attachment(filename: str, ctype: str, data: bytes, **limits: float) -> list[Finding]:
    return scan(message("Please see attached.", attachments=((filename, ctype, data),)), **limits)


def confident(findings: list[Finding], kind: str = "nhs_number") -> list[Finding]:
    return [f for f in findings if f.kind == kind and f.confident]


def reasons(findings: list[Finding]) -> set[str]:
    return {f.reason or "" for f in findings if f.kind == "unscannable"}


# --- zip --------------------------------------------------------------------------------------

def zip_bytes(members: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def add_members(package: bytes, members: dict[str, bytes]) -> bytes:
    """``package`` (a zip) with ``members`` added or replaced."""
    src = zipfile.ZipFile(io.BytesIO(package))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            if info.filename not in members:
                out.writestr(info, src.read(info))
        for name, data in members.items():
            out.writestr(name, data)
    return buf.getvalue()


def mark_encrypted(data: bytes) -> bytes:
    """A zip whose members claim to be encrypted (general purpose flag bit 0 set)."""
    out = bytearray(data)
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = out.find(sig)
        while pos >= 0:
            out[pos + flag_at] |= 0x1
            pos = out.find(sig, pos + 4)
    return bytes(out)


def nested_bomb(levels: int = 4, fanout: int = 16, leaf_bytes: int = 20 << 20) -> bytes:
    """A 42.zip-style archive: ``fanout`` copies of the level below, zeros at the bottom."""
    data = zip_bytes({"zeros.bin": bytes(leaf_bytes)})
    for level in range(levels):
        data = zip_bytes({f"lib{level}_{i}.zip": data for i in range(fanout)})
    return data


# --- xlsx -------------------------------------------------------------------------------------

def xlsx_bytes(wb: openpyxl.Workbook) -> bytes:
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def xlsx_column(header: str, number: str = NHS) -> bytes:
    """A one-sheet workbook with ``number`` in a column headed ``header``."""
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(["Name", header])
    ws.append(["Grace", number])
    return xlsx_bytes(wb)


def xlsx_with(place: str, number: str = NHS) -> bytes:
    """A workbook whose only identifier sits in ``place`` (a hiding place), with no cue word."""
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "Summary"
    ws["A1"], ws["B1"] = "Centre", "Calls"
    ws["A2"], ws["B2"] = "Oakham", 412
    if place in ("hidden", "veryHidden"):
        hidden = wb.create_sheet("Data")
        hidden.sheet_state = place
        hidden["A1"], hidden["B1"] = "Ref", "NHS No"
        hidden["A2"], hidden["B2"] = "x", number
    elif place == "comment":
        ws["B2"].comment = Comment(f"Patient {number}", "GP")
    elif place == "defined_name":
        wb.defined_names["patient_ref"] = DefinedName("patient_ref", attr_text=f'"NHS {number}"')
    elif place == "numeric":
        ws["C1"], ws["C2"] = "NHS number", int(number)
    data = xlsx_bytes(wb)
    if place == "chart":
        data = add_members(data, {"xl/charts/chart1.xml": chart_xml(["NHS number", number]).encode()})
    return data


def chart_xml(values: list[str]) -> str:
    points = "".join(f'<c:pt idx="{i}"><c:v>{v}</c:v></c:pt>' for i, v in enumerate(values))
    return (
        '<c:chartSpace xmlns:c="http://schemas.openxmlformats.org/drawingml/2006/chart">'
        f'<c:chart><c:plotArea><c:barChart><c:ser><c:cat><c:strRef><c:f>Data!$A$1:$A$2</c:f>'
        f'<c:strCache><c:ptCount val="{len(values)}"/>{points}</c:strCache></c:strRef></c:cat>'
        "</c:ser></c:barChart></c:plotArea></c:chart></c:chartSpace>"
    )


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">'
              for i in range(1, 10))
    + ']><sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="1" uniqueCount="1">'
    "<si><t>&lol9;</t></si></sst>"
)


# --- docx, pptx, odf, pdf ---------------------------------------------------------------------

W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


def docx_bytes(place: str, text: str) -> bytes:
    """A docx whose ``text`` sits in ``place``: body, table, header, footer, comment, footnote."""
    doc = docx.Document()
    doc.add_paragraph("Dear colleague,")
    section = doc.sections[0]
    if place == "body":
        doc.add_paragraph(text)
    elif place == "table":
        table = doc.add_table(rows=2, cols=2)
        table.cell(0, 0).text, table.cell(0, 1).text = "Name", "Ref"
        table.cell(1, 0).text, table.cell(1, 1).text = "Grace", text
    elif place == "header":
        section.header.paragraphs[0].text = text
    elif place == "footer":
        section.footer.paragraphs[0].text = text
    elif place == "comment":
        para = doc.add_paragraph("See note")
        doc.add_comment(para.runs, text=text, author="GP")
    buf = io.BytesIO()
    doc.save(buf)
    data = buf.getvalue()
    if place == "footnote":
        data = add_members(data, {"word/footnotes.xml": (
            f'<w:footnotes xmlns:w="{W_NS}"><w:footnote w:id="1"><w:p><w:r><w:t>{text}</w:t></w:r></w:p>'
            "</w:footnote></w:footnotes>").encode()})
    return data


def pptx_bytes(slide_text: str, notes_text: str) -> bytes:
    a = 'xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main"'
    p = 'xmlns:p="http://schemas.openxmlformats.org/presentationml/2006/main"'

    def shape(text: str) -> bytes:
        return (f"<p:sld {p} {a}><p:cSld><p:spTree><p:sp><p:txBody><a:p><a:r><a:t>{text}</a:t></a:r></a:p>"
                "</p:txBody></p:sp></p:spTree></p:cSld></p:sld>").encode()

    return zip_bytes({
        "[Content_Types].xml": b"<Types/>",
        "ppt/presentation.xml": f"<p:presentation {p}/>".encode(),
        "ppt/slides/slide1.xml": shape(slide_text),
        "ppt/notesSlides/notesSlide1.xml": shape(notes_text),
    })


ODF_NS = ('xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
          'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
          'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0"')


ODT = "application/vnd.oasis.opendocument.text"


def odf_bytes(body_xml: str, *, styles_xml: str = "", mimetype: str = ODT, encrypted: bool = False) -> bytes:
    manifest = ("<manifest><file-entry><encryption-data/></file-entry></manifest>" if encrypted
                else "<manifest/>")
    return zip_bytes({
        "mimetype": mimetype.encode(),
        "content.xml": f"<office:document-content {ODF_NS}><office:body>{body_xml}</office:body>"
                       "</office:document-content>".encode(),
        "styles.xml": f"<office:document-styles {ODF_NS}>{styles_xml}</office:document-styles>".encode(),
        "META-INF/manifest.xml": manifest.encode(),
    })


def pdf_bytes(lines: list[str], *, encrypt: str | None = None) -> bytes:
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, pagesize=A4, encrypt=encrypt)
    y = 800
    for line in lines:
        pdf.drawString(72, y, line)
        y -= 20
    pdf.showPage()
    pdf.save()
    return buf.getvalue()
