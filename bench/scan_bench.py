"""Scan throughput: ``scan_message`` over generated text, csv, xlsx, docx and pdf attachments.

Usage: ``.venv/bin/python bench/scan_bench.py [--json OUT] [--only FORMAT ...] [--no-peak]``.
Prints MB/s per format (median of three runs, size of the attachment as sent) by the wall clock,
which is what a held message waits: a large message gets a second process for its detectors
(relayguard.detect.parallel). ``cpu_mb_per_s`` is the same per CPU second, both processes counted.
Each format waits for a quiet machine first (``settle``), and records CPU idle before and during.
Then the peak extra memory of scanning a 20 MB xlsx, in a fresh subprocess with tracemalloc and
without the helper, so that every allocation is in the one process traced (the helper adds at
most a few units in flight).
JSON: {"<format>": {"mb_per_s": float, "cpu_mb_per_s": float, "bytes": int}, ...,
"xlsx_20mb_peak_mb": float}
"""

from __future__ import annotations

import argparse
import email
import email.policy
import io
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zipfile
from email.message import Message
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

from monitor import cpu_times, idle_pct_since

from relayguard.config import ScanSettings
from relayguard.detect import scan_message

MB = 1 << 20
RUNS = 3
FORMATS = ("text", "csv", "xlsx", "docx", "pdf")
FIRST = ["Grace", "Oliver", "Amelia", "George", "Isla", "Noah", "Ava", "Leo", "Freya", "Arthur"]
LAST = ["Smith", "Jones", "Patel", "Evans", "Wood", "Khan", "Hughes", "Clarke", "Green", "Hall"]
_PROSE = ("please see the follow up plan we discussed on the phone with the practice team and "
          "call reception if anything changes before the next review of the care plan")
WORDS = _PROSE.split()


def _nhs(rng: random.Random) -> str:
    while True:
        nine = f"{rng.randint(400_000_000, 499_999_999)}"
        check = 11 - sum(int(d) * w for d, w in zip(nine, range(10, 1, -1), strict=True)) % 11
        if check != 10:
            return nine + str(0 if check == 11 else check)


def _row(rng: random.Random) -> list[str]:
    return [rng.choice(FIRST), rng.choice(LAST), _nhs(rng),
            f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(1930, 2020)}",
            f"LE{rng.randint(1, 19)} {rng.randint(1, 9)}{rng.choice('ABDEFGHJ')}{rng.choice('LNPQRSTU')}",
            rng.choice(["diabetes review", "medication query", "fall at home", "asthma check"])]


def gen_text(size: int, rng: random.Random) -> bytes:
    lines, total = [], 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(14))
        if rng.random() < 0.05:  # phone numbers and references, as in ordinary practice mail
            line += rng.choice([" call 0118 496 0000", f" ref {rng.randint(10**9, 10**10 - 1)}"])
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines).encode()


def gen_csv(size: int, rng: random.Random) -> bytes:
    out = ["first,last,nhs_number,dob,postcode,problem"]
    total = 0
    while total < size:
        line = ",".join(_row(rng))
        out.append(line)
        total += len(line) + 1
    return "\n".join(out).encode()


def gen_xlsx(size: int, rng: random.Random) -> bytes:
    """A workbook written directly as XML (openpyxl is far too slow to write 20 MB)."""
    ns = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    strings = [*FIRST, *LAST]
    index = {s: i for i, s in enumerate(strings)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("xl/workbook.xml", f'<workbook xmlns="{ns}" xmlns:r="{rel}"><sheets>'
                                       '<sheet name="Patients" sheetId="1" r:id="rId1"/></sheets></workbook>')
        zf.writestr("xl/_rels/workbook.xml.rels",
                    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
                    '<Relationship Id="rId1" Target="worksheets/sheet1.xml"/>'
                    '<Relationship Id="rId2" Target="sharedStrings.xml"/></Relationships>')
        zf.writestr("xl/sharedStrings.xml", f'<sst xmlns="{ns}">'
                    + "".join(f"<si><t>{s}</t></si>" for s in strings) + "</sst>")
        with zf.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as sheet:
            sheet.write(f'<worksheet xmlns="{ns}"><sheetData>'.encode())
            header = "".join(f'<c r="{c}1" t="inlineStr"><is><t>{h}</t></is></c>' for c, h in
                             zip("ABCDEF", ["First", "Last", "NHS number", "DOB", "Postcode", "Problem"],
                                 strict=True))
            sheet.write(f'<row r="1">{header}</row>'.encode())
            r = 1
            while buf.tell() < size:
                chunk = []
                for _ in range(2000):
                    r += 1
                    first, last, nhs, dob, pc, problem = _row(rng)
                    chunk.append(
                        f'<row r="{r}"><c r="A{r}" t="s"><v>{index[first]}</v></c>'
                        f'<c r="B{r}" t="s"><v>{index[last]}</v></c><c r="C{r}"><v>{nhs}</v></c>'
                        f'<c r="D{r}" t="inlineStr"><is><t>{dob}</t></is></c>'
                        f'<c r="E{r}" t="inlineStr"><is><t>{pc}</t></is></c>'
                        f'<c r="F{r}" t="inlineStr"><is><t>{problem}</t></is></c></row>')
                sheet.write("".join(chunk).encode())
            sheet.write(b"</sheetData></worksheet>")
    return buf.getvalue()


def gen_docx(size: int, rng: random.Random) -> bytes:
    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    paras, total = [], 0
    while total < size * 3:  # document XML compresses about threefold
        text = " ".join(rng.choice(WORDS) for _ in range(20)) + f" NHS {_nhs(rng)}"
        paras.append(f"<w:p><w:r><w:t>{text}</w:t></w:r></w:p>")
        total += len(paras[-1])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        body = "".join(paras)
        zf.writestr("word/document.xml", f"<w:document xmlns:w=\"{w}\"><w:body>{body}</w:body></w:document>")
    return buf.getvalue()


def gen_pdf(pages: int, rng: random.Random) -> bytes:
    from reportlab.pdfgen import canvas  # noqa: PLC0415 - only the pdf case needs reportlab

    buf = io.BytesIO()
    pdf = canvas.Canvas(buf)
    for _ in range(pages):
        for y in range(800, 60, -14):
            pdf.drawString(40, y, " ".join(rng.choice(WORDS) for _ in range(10)) + f" {_nhs(rng)}")
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


def build_message(name: str, data: bytes) -> Message:
    outer = MIMEMultipart("mixed")
    outer["From"], outer["To"], outer["Subject"] = "gp@example.nhs.uk", "x@example.com", "bench"
    if name == "body.txt":
        outer.attach(MIMEText(data.decode(), "plain", "utf-8"))
    else:
        part = MIMEApplication(data, "octet-stream")
        part.add_header("Content-Disposition", "attachment", filename=name)
        outer.attach(part)
    return email.message_from_bytes(outer.as_bytes(), policy=email.policy.compat32)


def settle(*, quiet_pct: float = 90.0, limit_s: float = 60.0) -> float:
    """Wait (at most ``limit_s``) until the machine's CPU is idle ``quiet_pct`` of a second: a
    large message is scanned on both cores, so a neighbour finishing its work (the throughput
    runs before this one, a database vacuuming after them) would halve the figure. The idle %
    of the last second waited."""
    deadline = time.monotonic() + limit_s
    while True:
        started = cpu_times()
        time.sleep(1.0)
        idle = idle_pct_since(started)
        if idle >= quiet_pct or time.monotonic() > deadline:
            return idle


def time_scan(msg: Message) -> tuple[float, float]:
    """Median wall-clock seconds of a scan, and its CPU seconds (this process and the detection
    helper it may fork: see relayguard.detect.parallel)."""
    limits = ScanSettings(time_budget=600)
    times, cpu = [], []
    for _ in range(RUNS):
        helper_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started, cpu_started = time.perf_counter(), time.process_time()
        findings = scan_message(msg, limits=limits)
        times.append(time.perf_counter() - started)
        helper = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(time.process_time() - cpu_started + helper.ru_utime + helper.ru_stime
                   - helper_before.ru_utime - helper_before.ru_stime)
        if any(f.kind == "unscannable" for f in findings):
            raise SystemExit(f"benchmark input was unscannable: {[f.public() for f in findings]}")
    return statistics.median(times), statistics.median(cpu)


def peak_in_subprocess(path: Path) -> float:
    """Extra resident memory (MB) of scanning the xlsx at ``path``, in a fresh interpreter."""
    out = subprocess.run([sys.executable, __file__, "--peak", str(path)], check=True,
                         capture_output=True, text=True)
    return float(out.stdout.split()[0])


def _peak_child(path: Path) -> None:
    msg = build_message("big.xlsx", path.read_bytes())
    # tracemalloc counts Python's allocations, which is where extraction holds text; the RSS
    # high-water mark is printed as well but already includes building the message itself.
    tracemalloc.start()
    scan_message(msg, limits=ScanSettings(time_budget=600, detect_helper=False))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(peak / MB, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--only", action="append", choices=FORMATS, metavar="FORMAT",
                        help=f"measure only this format (repeatable): {', '.join(FORMATS)}")
    parser.add_argument("--no-peak", action="store_true", help="skip the 20 MB xlsx memory probe")
    parser.add_argument("--peak", type=Path, help=argparse.SUPPRESS)  # child mode for the memory probe
    args = parser.parse_args()
    if args.peak:
        _peak_child(args.peak)
        return
    rng = random.Random(7)
    # Every input is generated, in this order, whatever is measured: the seeded generator then
    # gives the same bytes for a format whether it runs alone or with the others.
    inputs = {
        "text": ("body.txt", gen_text(10 * MB, rng)),
        "csv": ("patients.csv", gen_csv(5 * MB, rng)),
        "xlsx": ("patients.xlsx", gen_xlsx(20 * MB, rng)),
        "docx": ("letter.docx", gen_docx(2 * MB, rng)),
        "pdf": ("letters.pdf", gen_pdf(40, rng)),
    }
    results: dict[str, object] = {}
    for fmt, (name, data) in inputs.items():
        if args.only and fmt not in args.only:
            continue
        msg = build_message(name, data)
        settled = settle()
        started = cpu_times()
        seconds, cpu = time_scan(msg)
        idle = idle_pct_since(started)
        results[fmt] = {"mb_per_s": round(len(data) / MB / seconds, 2), "bytes": len(data),
                        "cpu_mb_per_s": round(len(data) / MB / cpu, 2),
                        "cpu_idle_before_pct": round(settled, 1), "cpu_idle_pct": round(idle, 1)}
        print(f"{fmt:5} {len(data) / MB:7.1f} MB  {len(data) / MB / seconds:8.1f} MB/s"
              f"  ({len(data) / MB / cpu:.1f} MB per CPU second; CPU idle {settled:.0f} % before,"
              f" {idle:.0f} % during)")
    if not args.no_peak:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "big.xlsx"
            path.write_bytes(inputs["xlsx"][1])
            peak = peak_in_subprocess(path)
        results["xlsx_20mb_peak_mb"] = round(peak, 1)
        size = len(inputs["xlsx"][1]) / MB
        print(f"xlsx 20 MB peak extra memory: {peak:.1f} MB ({peak / size:.1f}x size)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
