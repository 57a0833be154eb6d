"""OpenDocument (odt, ods, odp): text and table cells of content.xml and styles.xml.

styles.xml holds page headers and footers, where a letterhead or a patient banner can sit.
"""

from __future__ import annotations

from collections.abc import Iterator

from relayguard.extract.archive import SafeZip
from relayguard.extract.base import Budget, Source, TextUnit, UnscannableError
from relayguard.extract.xmltext import Layout, layout_text, qualify

_TEXT = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"
_TABLE = "urn:oasis:names:tc:opendocument:xmlns:table:1.0"
_OFFICE = "urn:oasis:names:tc:opendocument:xmlns:office:1.0"

_ODF = Layout(
    para=qualify(_TEXT, "p", "h"),
    cell=qualify(_TABLE, "table-cell", "covered-table-cell"),
    row=qualify(_TABLE, "table-row"),
    mixed=True,
    cell_value=f"{{{_OFFICE}}}value",  # the raw number behind a formatted cell ("4.37E+09")
)
_PARTS = ("content.xml", "styles.xml", "meta.xml")


def extract_odf(src: Source, budget: Budget) -> Iterator[TextUnit]:
    pkg = SafeZip(src.data, budget, kind="odf")
    if pkg.has("META-INF/manifest.xml") and b"encryption-data" in pkg.read("META-INF/manifest.xml"):
        raise UnscannableError("encrypted odf document")
    for name in _PARTS:
        if pkg.has(name):
            with pkg.stream(name) as stream:
                yield from layout_text(stream, _ODF, where=f"{src.where}/{name[:-4]}", kind="odf",
                                       budget=budget)
