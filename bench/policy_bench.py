"""How long one policy decision takes for a plain 10 KiB message.

    .venv/bin/python bench/policy_bench.py [--json] [--n 2000]

Three figures, in µs per message: ``parse`` (header block, recipients, MIME parse), ``policy``
(parse + every rule of the default policy, no detectors: the policy engine's own cost) and
``decide`` (the whole engine as the relay runs it, detectors included).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from relayguard.config import ScanSettings
from relayguard.decision import Envelope, Finding, Submitter, SubmitterKind
from relayguard.message import parse_message
from relayguard.policy import decide, load_policy

ROOT = Path(__file__).resolve().parents[1]
SENDER = "reception@oakfield-surgery.nhs.uk"


def plain_message(size: int = 10 * 1024) -> bytes:
    head = (f"From: Oakfield Surgery <{SENDER}>\r\nTo: Ward 7 <ward7.admin@nhs.net>\r\n"
            "Cc: Practice Manager <pm@oakfield-surgery.nhs.uk>\r\nSubject: Discharge summary follow-up\r\n"
            "Date: Sun, 23 Nov 2025 12:13:20 -0000\r\nMessage-ID: <bench@oakfield-surgery.nhs.uk>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
    line = "Thank you for the discharge summary; we will review the medication changes this week.\r\n"
    return (head + line * (size // len(line))).encode()


def no_detectors(msg: object, **kwargs: object) -> list[Finding]:
    return []


def per_call_us(fn: Callable[[], object], n: int) -> float:
    for _ in range(min(n, 100)):
        fn()  # warm caches and lazy imports
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    policy = load_policy(ROOT / "policies" / "default.yaml")
    raw = plain_message()
    env = Envelope(SENDER, ("ward7.admin@nhs.net", "pm@oakfield-surgery.nhs.uk"))
    who = Submitter(SENDER, SubmitterKind.NETWORK, "127.0.0.1")
    limits = ScanSettings()
    result = {
        "message_bytes": len(raw),
        "rules": len(policy.rules),
        "parse_us": per_call_us(lambda: parse_message(raw, limits), args.n),
        "policy_us": per_call_us(lambda: decide(raw, env, who, policy, limits=limits,
                                                detector=no_detectors), args.n),
        "decide_us": per_call_us(lambda: decide(raw, env, who, policy, limits=limits), args.n),
    }
    if args.json:
        print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}))
    else:
        print(f"{result['message_bytes']} byte message, {result['rules']} rules:")
        for key in ("parse_us", "policy_us", "decide_us"):
            print(f"  {key.removesuffix('_us'):>7}: {result[key]:8.1f} µs per decision")


if __name__ == "__main__":
    main()
