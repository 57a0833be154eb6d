"""The policy file's schema (pydantic v2, strict, unknown keys refused). See docs/POLICY.md.

Strict mode means YAML ``"11"`` is not the number 11: a quoted number in a policy is almost always
a mistake worth hearing about. Cross-references (domain list names, finding kinds, groups) are
checked by :mod:`relayguard.policy.loader`, which knows where each value sits in the file.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

import regex
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

REGEX_TIMEOUT = 0.05  # seconds per admin regex evaluation; a timeout counts as a match (fail safe)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DETECTOR_NAME = re.compile(r"[a-z0-9][a-z0-9_]{0,63}")
_HEADER_TEXT = re.compile(r"[\x20-\x7e]*")  # printable ASCII: safe in a header or an SMTP reply


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=False)


def compile_regex(pattern: str) -> Any:
    """``pattern`` compiled with the ``regex`` package (which supports match timeouts)."""
    try:
        return regex.compile(pattern, regex.V0)  # V0: the dialect the detectors use too
    except regex.error as exc:
        raise ValueError(f"invalid regex: {exc}") from None


def _printable(value: str, what: str, limit: int) -> str:
    if not _HEADER_TEXT.fullmatch(value) or len(value) > limit:
        raise ValueError(f"{what} must be printable ASCII on one line, at most {limit} characters")
    return value


class DomainList(_Strict):
    domains: list[str] = Field(default_factory=list)
    subdomains: bool = False  # also match any subdomain of each listed domain
    replace_shipped: bool = False  # secure/public_mailbox: drop the shipped domains


class PatternDef(_Strict):
    regex: str
    confident: bool = True

    @field_validator("regex")
    @classmethod
    def _valid(cls, value: str) -> str:
        if compile_regex(value).fullmatch(""):
            raise ValueError("regex matches the empty string, so it would match everywhere")
        return value


class RecipientCondition(_Strict):
    """Recipients that are in any of ``in`` and in none of ``outside``; at least ``min`` of them."""

    in_: list[str] = Field(default_factory=list, alias="in")
    outside: list[str] = Field(default_factory=list)
    min: int = Field(default=1, ge=1)


class FindingCondition(_Strict):
    kinds: list[str] = Field(min_length=1)
    confident: bool = True  # count only confident findings
    min_distinct: int = Field(default=1, ge=1)
    where: str | None = None  # glob over Finding.where, e.g. "attachment:*"


class SubmitterCondition(_Strict):
    names: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _some(self) -> SubmitterCondition:
        if not self.names and not self.groups:
            raise ValueError("give names or groups")
        return self


class AttachmentCondition(_Strict):
    types: list[str] = Field(default_factory=list)  # globs over content types
    names: list[str] = Field(default_factory=list)  # globs over file names, case-insensitive

    @model_validator(mode="after")
    def _some(self) -> AttachmentCondition:
        if not self.types and not self.names:
            raise ValueError("give types or names")
        return self


class SizeCondition(_Strict):
    min: int | None = Field(default=None, ge=0)  # bytes
    max: int | None = Field(default=None, ge=0)


class HeaderCondition(_Strict):
    name: str
    regex: str
    _compiled: Any = PrivateAttr(default=None)

    @field_validator("regex")
    @classmethod
    def _valid(cls, value: str) -> str:
        compile_regex(value)
        return value

    def model_post_init(self, context: Any, /) -> None:
        self._compiled = compile_regex(self.regex)

    def search(self, value: str) -> bool:
        try:
            return self._compiled.search(value, timeout=REGEX_TIMEOUT) is not None
        except TimeoutError:
            return True  # rules only ever tighten, so an undecided match errs on the safe side


class When(_Strict):
    """All given conditions must hold; an empty ``when`` matches every message."""

    visible_recipients: RecipientCondition | None = None
    recipients: RecipientCondition | None = None
    findings: FindingCondition | None = None
    submitter: SubmitterCondition | None = None
    source_network: list[str] | None = None
    attachment: AttachmentCondition | None = None
    size: SizeCondition | None = None
    headers: list[HeaderCondition] | None = None

    @field_validator("source_network")
    @classmethod
    def _cidrs(cls, value: list[str] | None) -> list[str] | None:
        for net in value or ():
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"not a network: {net!r}") from None
        return value


class Then(_Strict):
    action: Literal["deliver", "hold", "reject"] = "deliver"
    reply: str | None = None
    rewrite: Literal["bcc", "individual"] | None = None
    tag_subject: str | None = None
    notify: list[str] = Field(default_factory=list)
    approvals: Literal[1, 2] = 1
    approver_role: Literal["reviewer", "admin"] = "reviewer"

    @field_validator("reply")
    @classmethod
    def _reply(cls, value: str | None) -> str | None:
        return None if value is None else _printable(value, "reply", 400)

    @field_validator("tag_subject")
    @classmethod
    def _tag(cls, value: str | None) -> str | None:
        return None if value is None else _printable(value, "tag_subject", 40)

    @model_validator(mode="after")
    def _coherent(self) -> Then:
        if self.reply is not None and self.action != "reject":
            raise ValueError("reply is only used with action: reject")
        return self


class Rule(_Strict):
    name: str
    description: str | None = None
    when: When = Field(default_factory=When)
    then: Then

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("rule names are letters, digits, '_', '.', '-' (at most 64)")
        return value


class Policy(_Strict):
    version: Literal[1] = 1
    internal_from_sender: bool = True  # add the sender's own domain to `internal` per message
    domains: dict[str, DomainList] = Field(default_factory=dict)
    patterns: dict[str, PatternDef] = Field(default_factory=dict)
    terms: dict[str, list[str]] = Field(default_factory=dict)
    groups: dict[str, list[str]] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)

    @field_validator("patterns", "terms")
    @classmethod
    def _detector_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not _DETECTOR_NAME.fullmatch(name):
                raise ValueError(f"detector name {name!r} must be lower-case letters, digits, '_'")
        return value
