"""The detection helper (detect/parallel.py): a forked process runs the detectors on some units
of a large message. Whatever it does, the findings are exactly those of a scan without it."""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import random
import signal
from dataclasses import replace
from email.message import Message
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from multiprocessing.connection import Connection
from typing import Any

import openpyxl
import pytest

from relayguard.config import ScanSettings
from relayguard.decision import Finding
from relayguard.detect import parallel, scan_message
from relayguard.detect.custom import CustomDetectors, CustomPattern, CustomRunner, TermList
from relayguard.detect.finders import builtin_hits
from relayguard.detect.tally import Tally
from relayguard.extract import sheetxml, table
from relayguard.extract.base import Budget, Cells, TextUnit, Work
from relayguard.extract.ooxml import SheetRun
from tests.extract.builders import message, parse, scan_attachment, valid_numbers

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@pytest.fixture(autouse=True)
def small_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many small units, and a helper from the first one: a few hundred rows exercise it all."""
    monkeypatch.setattr(table, "UNIT_CHARS", 2_000)
    monkeypatch.setattr(sheetxml, "CHUNK", 4096)  # many runs of rows per sheet
    monkeypatch.setattr(parallel, "HELP_AFTER_S", 0.0)


def _register(rows: int, seed: int = 3) -> bytes:
    """A workbook with numbers in an NHS column, in a headerless column beside dates of birth,
    unsupported ones in a notes sheet (weak, then confident once three are seen), and repeats."""
    rng = random.Random(seed)
    numbers = valid_numbers("45", rows)
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Patients"
    ws.append(["Name", "NHS number", "DOB", "Postcode", ""])
    for i, nhs in enumerate(numbers):
        other = numbers[rng.randrange(rows)]  # a repeat, somewhere else
        ws.append([f"Patient {i}", nhs, f"0{1 + i % 9}/0{1 + i % 9}/19{50 + i % 40}",
                   f"LE{1 + i % 19} {i % 10}AB", other if i % 7 else ""])
    notes = wb.create_sheet("Notes")
    notes.sheet_state = "hidden"
    for nhs in numbers[: rows // 50]:
        notes.append([f"ref {nhs}", "call 0118 496 0000"])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _scan(msg: Message, helper: bool) -> list[dict[str, Any]]:
    findings = scan_message(msg, limits=ScanSettings(time_budget=120, detect_helper=helper), salt=b"s")
    return [_whole(f) for f in findings]


def _whole(f: Finding) -> dict[str, Any]:
    return {**f.public(), "digests": sorted(f.digests)}


def _attachment(data: bytes) -> Message:
    outer = MIMEMultipart()
    part = MIMEApplication(data, "vnd.openxmlformats-officedocument.spreadsheetml.sheet")
    part.add_header("Content-Disposition", "attachment", filename="register.xlsx")
    outer.attach(part)
    return parse(outer.as_bytes())


def test_findings_with_the_helper_are_exactly_those_without(monkeypatch: pytest.MonkeyPatch) -> None:
    msg = _attachment(_register(600))
    alone = _scan(msg, helper=False)
    assert any(f["kind"] == "nhs_number" and f["count"] >= 600 for f in alone)  # the input is real
    assert {f["where"].split("!")[0] for f in alone} >= {"attachment:register.xlsx/Patients",
                                                          "attachment:register.xlsx/Notes"}
    sent: list[Work] = []
    send = parallel._Helper.send

    def counted(self: parallel._Helper, work: Work) -> bool:
        sent.append(work)
        return send(self, work)

    monkeypatch.setattr(parallel._Helper, "send", counted)
    assert _scan(msg, helper=True) == alone
    assert any(isinstance(w, SheetRun) for w in sent)  # the helper did a share (how much: timing)


def test_custom_detectors_and_several_workbooks_give_the_serial_result(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Term lists and patterns run in the helper too; each workbook's shared strings reach it."""
    outer = MIMEMultipart()
    for name, seed in (("one.xlsx", 21), ("two.xlsx", 22)):
        wb = openpyxl.load_workbook(io.BytesIO(_register(300, seed=seed)))
        ws = wb["Patients"]
        for r in range(2, ws.max_row + 1):
            ws.cell(r, 1).value = f"{name[:3]} diabetes {r % 13}"  # shared strings differ per book
            ws.cell(r, 6).value = f"MRN{seed}{r:05d}"
        buf = io.BytesIO()
        wb.save(buf)
        part = MIMEApplication(buf.getvalue(), "octet-stream")
        part.add_header("Content-Disposition", "attachment", filename=name)
        outer.attach(part)
    msg = parse(outer.as_bytes())
    custom = CustomDetectors(patterns=(CustomPattern("mrn", r"MRN\d{7}"),),
                             terms=(TermList("clinical", ["diabetes"]),))

    def run(helper: bool) -> list[dict[str, Any]]:
        return [_whole(f) for f in scan_message(
            msg, limits=ScanSettings(time_budget=120, detect_helper=helper), custom=custom, salt=b"s")]

    alone = run(False)
    assert {"pattern:mrn", "term:clinical"} <= {f["kind"] for f in alone}
    assert {f["where"].split("/")[0] for f in alone} == {"attachment:one.xlsx", "attachment:two.xlsx"}
    assert run(True) == alone


def test_a_csv_table_goes_to_the_helper_and_plain_text_never_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """Units of a table are worth sending; plain text is detected as fast as it is pickled, so
    a long body never forks a helper (which would only add its memory)."""
    numbers = valid_numbers("46", 40)
    rows = ["ref,notes,other"]
    for i in range(400):
        nhs = numbers[i % len(numbers)]
        rows.append(f"patient NHS {nhs},seen,x" if i % 3 == 0 else f"{nhs},{'x' * 60},order")
    outer = MIMEMultipart()
    part = MIMEApplication("\n".join(rows).encode(), "octet-stream")
    part.add_header("Content-Disposition", "attachment", filename="list.csv")
    outer.attach(part)
    table_msg = parse(outer.as_bytes())
    text_msg = message("\n".join(rows))
    started: list[int] = []
    init = parallel._Helper.__init__

    def counted(self: parallel._Helper, *args: Any) -> None:
        started.append(1)
        init(self, *args)

    monkeypatch.setattr(parallel._Helper, "__init__", counted)
    assert _scan(table_msg, helper=True) == _scan(table_msg, helper=False)
    assert started == [1]
    assert _scan(text_msg, helper=True) == _scan(text_msg, helper=False)
    assert started == [1]


def test_a_helper_that_dies_costs_time_not_findings(monkeypatch: pytest.MonkeyPatch) -> None:
    msg = _attachment(_register(400, seed=5))
    alone = _scan(msg, helper=False)

    def dies_after_two(inbox: Connection, outbox: Connection, budget: Budget, runner: CustomRunner) -> None:
        answered = 0
        strings: dict[int, list[str]] = {}
        while answered < 2:
            message = inbox.recv()
            if message[0] == "strings":
                strings[message[1]] = message[2]
                continue
            work = message[1] if message[2] is None else replace(message[1], strings=strings[message[2]])
            outbox.send(parallel.detect_into(Tally(), work, budget, runner))
            answered += 1
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(parallel, "_serve", dies_after_two)
    assert _scan(msg, helper=True) == alone


def test_a_helper_that_hangs_ends_in_the_time_budget_and_is_stopped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def hangs(inbox: Connection, *_: object) -> None:
        inbox.recv()
        signal.pause()

    monkeypatch.setattr(parallel, "_serve", hangs)
    findings = scan_attachment("register.xlsx", XLSX, _register(300), time_budget=1.5)
    assert any(f.kind == "unscannable" and f.reason == "time budget exceeded" for f in findings)
    assert multiprocessing.active_children() == []  # killed, and reaped


def test_a_failed_fork_falls_back_to_scanning_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    msg = _attachment(_register(200, seed=9))
    alone = _scan(msg, helper=False)

    def no_fork(*_: object, **__: object) -> None:
        raise OSError("Resource temporarily unavailable")

    monkeypatch.setattr(parallel._Helper, "__init__", no_fork)
    assert _scan(msg, helper=True) == alone


def test_tally_merge_equals_tallying_every_hit_in_order() -> None:
    """Tally.merge of per-unit tallies, in order, against one tally of all hits."""
    rng = random.Random(11)
    numbers = valid_numbers("47", 30)
    units = []
    for u in range(12):
        pad = "x" * 70  # keeps "ref" lines out of the cue window of their neighbours
        lines = [f"NHS {n}" if rng.random() < 0.4 else f"{pad} ref {n} {pad}"
                 for n in rng.sample(numbers, 8)]
        units.append(TextUnit(f"part{u % 3}", "\n".join(lines)))
    whole, merged = Tally(), Tally()
    budget = Budget.start(ScanSettings())
    runner = CustomRunner(budget)
    for unit in units:
        whole.add_hits(unit, builtin_hits(unit.text, unit.cells))
        merged.merge(parallel.detect_into(Tally(), unit, budget, runner))
    assert [_whole(f) for f in merged.findings()] == [_whole(f) for f in whole.findings()]
    # Below the findings (where three distinct numbers make all confident): each value's order
    # and confidence, each group's first places.
    assert _state(merged) == _state(whole)
    assert any(not confident for values, _ in _state(whole).values() for _, confident in values)


def _state(tally: Tally) -> dict[tuple[str, str], tuple[list[tuple[Any, bool]], dict[bool, Any]]]:
    return {key: (list(group.values.items()), dict(group.first)) for key, group in tally._groups.items()}


def test_cells_headed_by_columns_give_each_cell_its_header_and_survive_pickling() -> None:
    cells = Cells([0, 5, 9], ["A2", "B2", "AA2"], columns={"A": "Name", "AA": "NHS"})
    again = pickle.loads(pickle.dumps(cells))
    assert again.headers == cells.headers == ["Name", None, "NHS"]
    assert Cells([0, 3], ["", ""]).headers == [None, None]
