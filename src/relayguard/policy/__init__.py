"""Policies: the YAML model, its loader, the pure engine and live reload.

``load_policy(path)`` → :class:`LoadedPolicy`; ``decide(raw, envelope, submitter, policy, limits=…)``
→ :class:`~relayguard.decision.Decision`. See docs/POLICY.md for the file format.
"""

from __future__ import annotations

from relayguard.policy.engine import decide
from relayguard.policy.loader import Issue, LoadedPolicy, PolicyFileError, load_policy, parse_policy

__all__ = ["Issue", "LoadedPolicy", "PolicyFileError", "decide", "load_policy", "parse_policy"]
