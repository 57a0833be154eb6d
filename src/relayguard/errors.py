"""relayguard's exceptions: one root, SMTP-facing ones carry the reply code.

- RelayguardError
    - ConfigError            a setting is missing or invalid (CLI exits 2)
    - PolicyError            a policy file is invalid (names file, line, column)
    - StoreError             the store could not commit or read (the client hears 451)
        - ConflictError      a state change lost a race (approve vs reject, double claim)
    - AuthError              bad credentials or a locked account
    - PermissionDenied       an actor may not do this (four-eyes rule, role)
    - NotFound               no such message, user or entry
    - DeliveryError          the upstream refused or could not be reached; ``code`` is its reply
    - ScanUnavailableError   no decision could be made (a scan worker died or hung): 451
"""

from __future__ import annotations


class RelayguardError(Exception):
    """Root of every error relayguard raises on purpose."""


class ConfigError(RelayguardError):
    pass


class PolicyError(RelayguardError):
    pass


class StoreError(RelayguardError):
    code = 451


class ConflictError(StoreError):
    pass


class AuthError(RelayguardError):
    code = 535


class PermissionDenied(RelayguardError):  # noqa: N818 - reads as a verdict, like Django's
    pass


class NotFound(RelayguardError):  # noqa: N818
    pass


class DeliveryError(RelayguardError):
    """The upstream answered ``code`` (0 when it could not be reached at all)."""

    def __init__(self, message: str, *, code: int = 0, permanent: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.permanent = permanent


class ScanUnavailableError(RelayguardError):
    """No decision could be made (a scan worker died or hung): the client is told to retry."""

    code = 451
