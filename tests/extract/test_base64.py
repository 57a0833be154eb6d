"""The base64 decoder for attachments gives email's own decode_b results, value and defects."""

from __future__ import annotations

import base64
import email
import email.policy

from hypothesis import given, settings
from hypothesis import strategies as st

from relayguard.extract import message as extract_message

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _same(encoded: bytes) -> None:
    got, got_defects = extract_message._decode_b(encoded)
    want, want_defects = extract_message._email_decode_b(encoded)
    assert got == want
    assert [type(d) for d in got_defects] == [type(d) for d in want_defects]


@settings(max_examples=600)
@given(st.text(alphabet=_ALPHABET + "=-_ !.\x00", max_size=40))
def test_any_input_decodes_as_email_decodes_it(text: str) -> None:
    _same(text.encode("ascii"))


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_valid_base64_decodes_as_email_decodes_it(data: bytes) -> None:
    encoded = base64.b64encode(data)
    _same(encoded)
    _same(encoded.rstrip(b"="))  # padding missing: a defect, same value


def test_edge_cases_decode_as_email_decodes_them() -> None:
    for encoded in (b"", b"QR==", b"QUI=", b"QQ", b"Q", b"QQ=", b"QQ==QQ==", b"QUJD\x00", b"====",
                    b"QUJD=", b"QU JD", b"A===", b"QUJDRA=="):
        _same(encoded)


def test_an_attachment_payload_is_the_stdlib_payload() -> None:
    data = bytes(range(256)) * 300
    raw = (b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(data).replace(b"\n", b"\r\n"))
    part = email.message_from_bytes(raw, policy=email.policy.compat32)
    payload = part.get_payload()
    assert isinstance(payload, str)
    assert extract_message._decode_base64(part, payload) == part.get_payload(decode=True) == data
