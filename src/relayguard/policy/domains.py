"""Named domain lists and the classification of recipient domains against them.

Three lists always exist: ``internal`` (the sending organisation; the sender's own domain is added
per message), ``secure`` (shipped: ``nhs.net``) and ``public_mailbox`` (shipped: consumer mail
providers). A policy adds domains to these, or defines its own lists for use in rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from relayguard.message import normalise_domain

INTERNAL = "internal"
SECURE = "secure"
PUBLIC_MAILBOX = "public_mailbox"
BUILTIN_LISTS = (INTERNAL, SECURE, PUBLIC_MAILBOX)

SHIPPED_SECURE = ("nhs.net",)
SHIPPED_PUBLIC_MAILBOX = (
    "gmail.com", "googlemail.com", "outlook.com", "outlook.co.uk", "hotmail.com", "hotmail.co.uk",
    "live.com", "live.co.uk", "msn.com", "yahoo.com", "yahoo.co.uk", "ymail.com", "rocketmail.com",
    "icloud.com", "me.com", "mac.com", "aol.com", "aol.co.uk", "btinternet.com", "btopenworld.com",
    "sky.com", "virginmedia.com", "blueyonder.co.uk", "ntlworld.com", "talktalk.net",
    "tiscali.co.uk", "protonmail.com", "protonmail.ch", "proton.me", "pm.me", "gmx.com", "gmx.co.uk",
    "gmx.net", "mail.com", "zoho.com", "yandex.com", "tutanota.com", "fastmail.com", "hushmail.com",
)


@dataclass(frozen=True, slots=True)
class DomainSet:
    """Domains in normalised form; ``subdomains`` also matches ``*.domain``."""

    domains: frozenset[str]
    subdomains: bool = False

    def contains(self, domain: str) -> bool:
        if not domain:
            return False  # a malformed address is in no list: it counts as outside every one
        if domain in self.domains:
            return True
        if self.subdomains:
            parts = domain.split(".")
            return any(".".join(parts[i:]) in self.domains for i in range(1, len(parts)))
        return False

    def with_domains(self, extra: Iterable[str]) -> DomainSet:
        return DomainSet(self.domains | frozenset(extra), self.subdomains)


def domain_set(domains: Iterable[str], *, subdomains: bool = False) -> DomainSet:
    return DomainSet(frozenset(d for d in (normalise_domain(x) for x in domains) if d), subdomains)


@dataclass(frozen=True, slots=True)
class DomainTable:
    """All named lists of a policy; ``for_sender`` adds the sending organisation to ``internal``."""

    lists: dict[str, DomainSet]

    def contains(self, name: str, domain: str) -> bool:
        return self.lists[name].contains(domain)

    def for_sender(self, sender_domains: Iterable[str]) -> DomainTable:
        # The sender's own domain never widens "internal" to a shared provider: a practice user
        # sending from gmail.com or nhs.net must not make every gmail.com or nhs.net box internal.
        own = [d for d in sender_domains
               if d and not self.contains(PUBLIC_MAILBOX, d) and not self.contains(SECURE, d)]
        if not own:
            return self
        lists = dict(self.lists)
        lists[INTERNAL] = lists[INTERNAL].with_domains(own)
        return DomainTable(lists)
