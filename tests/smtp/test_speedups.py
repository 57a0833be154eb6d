"""The aiosmtpd speed-ups must not change a single answer: compared with aiosmtpd's own code."""

from __future__ import annotations

import inspect
import logging

import aiosmtpd.smtp
import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from relayguard.config import SmtpSettings
from relayguard.smtp.handler import RelayHandler
from relayguard.smtp.server import RelaySMTP, SessionLimiter
from relayguard.smtp.speedups import simple_path


class _Plain(SMTP):
    """aiosmtpd's _getaddr, untouched (RelaySMTP overrides it)."""

    def __init__(self) -> None:  # no transport, no handler: only _getaddr is used
        self.local_part_limit = 0


def reference(arg: str) -> tuple[str | None, str | None]:
    try:
        return _Plain()._getaddr(arg)
    except Exception:  # its parser crashes on "<", "0@[ " (500); ours: syntax error
        return None, None


def ours(arg: str, limit: int = 0) -> tuple[str | None, str | None]:
    proto = RelaySMTP.__new__(RelaySMTP)
    proto.local_part_limit = limit
    return proto._getaddr(arg)


@pytest.mark.parametrize("arg", [
    "<alice@example.org>", "<alice@example.org> SIZE=1024 BODY=8BITMIME", " <a.b+tag@x-y.nhs.uk>",
    "<o'brien@example.org>\tSMTPUTF8", "<a@b>", "<>", "",
    # Forms the regex leaves to the full parser; the answer must still be aiosmtpd's.
    '<"quoted local"@example.org>', "<alice@[192.0.2.1]>", "alice@example.org", "<a..b@example.org>",
    "<.a@example.org>", "<a@example.org>SIZE=1", "<a@example.org", "<a@@example.org>",
    "<@relay.example:alice@example.org>", "<alice(comment)@example.org>", "<jörg@example.org>",
    "<alice@example.org.>", "<a@-example.org>", "<", "<a@b> (comment) SIZE=1", "<a@b>  ", "0@[", "0@[ ",
])
def test_same_answer_as_aiosmtpd(arg: str) -> None:
    assert ours(arg) == reference(arg)


def test_common_form_takes_the_fast_path() -> None:
    assert simple_path("<alice@example.org> SIZE=10") == ("alice@example.org", "SIZE=10")
    assert simple_path('<"x y"@example.org>') is None


def test_local_part_limit_still_applies() -> None:
    assert ours("<" + "a" * 65 + "@example.org>", limit=64) == (None, None)
    assert ours("<" + "a" * 64 + "@example.org>", limit=64)[0] == "a" * 64 + "@example.org"


_chars = st.sampled_from(list("abcXYZ019.-_+'@<>[]\"() \t=:,\\é"))


@settings(max_examples=3000, deadline=None)
@given(st.text(_chars, max_size=30))
def test_any_argument_gets_aiosmtpd_answer(arg: str) -> None:
    assert ours(arg) == reference(arg)


class _Protocolish:
    def auth_PLAIN(self) -> str:
        return "plain"

    async def auth_LOGIN(self) -> str:
        return "login"

    def smtp_HELO(self) -> None:
        """Not an auth method."""


def test_auth_methods_found_as_inspect_finds_them() -> None:
    obj = _Protocolish()
    expected = [(n, m) for n, m in inspect.getmembers(obj) if n.startswith("auth_")]
    assert aiosmtpd.smtp.inspect.getmembers(obj) == expected
    assert [n for n, _ in expected] == ["auth_LOGIN", "auth_PLAIN"]



def test_names_listed_as_dir_lists_them_for_the_prefixes_aiosmtpd_looks_for() -> None:
    """aiosmtpd finds smtp_*/handle_* methods by listing dir(); the per-class listing plus the
    instance's own names gives it the same names with those prefixes (and only those)."""
    obj = _Protocolish()
    obj.extra_attribute = 1  # type: ignore[attr-defined]
    obj.handle_own = 2  # type: ignore[attr-defined]
    listed = aiosmtpd.smtp.dir(obj)  # type: ignore[attr-defined]
    assert "handle_own" in listed
    assert sorted(set(listed)) == [n for n in dir(obj) if n.startswith(("smtp_", "handle_"))]
    assert aiosmtpd.smtp.dir(obj) is not dir(obj)  # type: ignore[attr-defined]


async def test_protocol_finds_the_same_commands_and_hooks_with_the_cached_listing() -> None:
    async def verify(name: str, password: str, ip: str) -> str:
        return name

    handler = RelayHandler.__new__(RelayHandler)
    proto = RelaySMTP(handler, settings=SmtpSettings(), verify=verify,
                      limiter=SessionLimiter(total=1, per_ip=1), tls_context=None)
    assert sorted(proto._smtp_methods) == sorted(m[5:] for m in dir(proto) if m.startswith("smtp_"))
    assert sorted(proto._handle_hooks) == ["DATA", "MAIL", "RCPT", "exception"]


def test_command_lines_are_still_logged_and_masked_when_their_level_is_on(
        caplog: pytest.LogCaptureFixture) -> None:
    """aiosmtpd.smtp.sanitized_log is ours (speedups.install): it skips a line whose level is
    off, and otherwise logs it as aiosmtpd's would, AUTH data masked."""
    assert aiosmtpd.smtp.sanitized_log.__module__ == "relayguard.smtp.speedups"
    log = aiosmtpd.smtp.log
    secret = b"AUTH PLAIN c2VjcmV0\r\n"
    with caplog.at_level(logging.WARNING, logger=log.name):
        aiosmtpd.smtp.sanitized_log(log.info, "%r >> %r", ("127.0.0.1", 1), secret)
    assert caplog.records == []
    with caplog.at_level(logging.INFO, logger=log.name):
        aiosmtpd.smtp.sanitized_log(log.info, "%r >> %r", ("127.0.0.1", 1), secret)
    [record] = caplog.records
    assert "c2VjcmV0" not in record.getMessage() and "********" in record.getMessage()
