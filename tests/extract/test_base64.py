"""The base64 decoder for attachments gives email's own decode_b results, value and defects."""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
from email.message import Message

import pytest
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


def _strict_accepts(text: str) -> bool:
    """What _strictly_valid must say: the strict decoder takes ``text`` less its line breaks,
    whole quanta, with no defect."""
    stripped = text.encode("ascii").translate(None, b"\r\n")
    if len(stripped) % 4:
        return False
    try:
        base64.b64decode(stripped, validate=True)
    except ValueError:
        return False
    return True


@settings(max_examples=600)
@given(st.text(alphabet="QUJD+/=\r\n!", max_size=40))
def test_the_slice_by_slice_check_agrees_with_the_strict_decoder(text: str) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(extract_message, "_CHECK_SLICE", 5)  # slices end anywhere, padding too
        valid = extract_message._strictly_valid(text)
    assert valid == _strict_accepts(text)
    if valid:  # then the lenient decode of the text itself is the strict one's value
        stripped = text.encode("ascii").translate(None, b"\r\n")
        assert binascii.a2b_base64(text) == base64.b64decode(stripped, validate=True)


def _large_part(payload: str) -> tuple[Message, str]:
    raw = ("Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + payload).encode("ascii")
    part = email.message_from_bytes(raw, policy=email.policy.compat32)
    got = part.get_payload()
    assert isinstance(got, str)
    assert len(got) >= extract_message._LARGE_BASE64
    return part, got


@pytest.mark.parametrize("damage", ["none", "no padding", "stray character", "padding inside",
                                    "data after padding", "one character short"])
def test_a_large_payload_decodes_as_email_decodes_it(damage: str) -> None:
    """From 1 MiB a payload is checked in slices and decoded from the string itself: the same
    bytes and the same defects as the stdlib's get_payload(decode=True), valid or not."""
    encoded = base64.encodebytes(bytes(range(256)) * 3001).decode("ascii").replace("\n", "\r\n")
    assert encoded.rstrip().endswith("=")
    middle = len(encoded) // 2
    payload = {
        "none": encoded,
        "no padding": encoded.rstrip().rstrip("=") + "\r\n",
        "stray character": encoded[:middle] + "!" + encoded[middle:],
        "padding inside": encoded[:middle] + "==\r\n" + encoded[middle:],
        "data after padding": encoded + "QUJD\r\n",
        "one character short": encoded[:middle] + encoded[middle + 1:],
    }[damage]
    part, got = _large_part(payload)
    assert extract_message._strictly_valid(got) == (damage == "none")
    ours = extract_message._decode_base64(part, got)
    ours_defects = [type(d) for d in part.defects]
    part.defects.clear()
    assert ours == part.get_payload(decode=True)
    assert ours_defects == [type(d) for d in part.defects]
