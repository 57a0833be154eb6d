"""The C-parser path refuses DTDs itself; other encodings still go through defusedxml."""

from __future__ import annotations

import io

import pytest

from relayguard.extract import UnscannableError
from relayguard.extract.xmltext import READ_CHUNK, events

_BOMB = '<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><x>&b;</x>'


@pytest.mark.parametrize("pad", [0, READ_CHUNK - 12, READ_CHUNK - 3])
def test_doctype_refused_even_across_a_read_boundary(pad: int) -> None:
    data = ('<?xml version="1.0" encoding="UTF-8"?>' + " " * pad + _BOMB).encode()
    with pytest.raises(UnscannableError, match="unsafe xml"):
        list(events(io.BytesIO(data), kind="xlsx"))


@pytest.mark.parametrize("data", [
    _BOMB.encode("utf-16"),
    (b'<?xml version="1.0" encoding="cp037"?>') + _BOMB.encode("cp037"),
])
def test_other_encodings_are_refused_by_defusedxml(data: bytes) -> None:
    with pytest.raises(UnscannableError, match=r"unsafe xml|corrupt"):
        list(events(io.BytesIO(data), kind="xlsx"))


def test_undeclared_entity_is_corrupt_and_plain_xml_parses() -> None:
    with pytest.raises(UnscannableError, match="corrupt"):
        list(events(io.BytesIO(b"<x>&lol;</x>"), kind="xlsx"))
    assert [e for e, _ in events(io.BytesIO(b"<x><y>&amp;</y></x>"), kind="xlsx")] == ["end", "end"]
