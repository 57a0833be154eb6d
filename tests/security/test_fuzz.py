"""The fuzz target's property, run for a few hundred examples in the normal suite."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from tests.security.fuzz_parse import check, messages


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_parse_and_decide_never_crash_and_never_pass_unread(raw: bytes) -> None:
    """Random, structured and mutated messages never crash parse+decide+rewrite or deliver unread content."""
    check(raw)
