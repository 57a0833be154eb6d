"""The machine and the software versions a run was measured with, for the top of RESULTS.md."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import paths


def _cmd(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    return (res.stdout or res.stderr).strip().splitlines()[0] if res.returncode == 0 else "not found"


def _pkg(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str | int]:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kib = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return {
        "nproc": os.cpu_count() or 0,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "cpu": cpu,
        "loadavg_at_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def versions() -> dict[str, str]:
    haraka_pkg = paths.CACHE / "node_modules" / "Haraka" / "package.json"
    haraka = json.loads(haraka_pkg.read_text())["version"] if haraka_pkg.exists() else "not installed"
    git = _cmd(["git", "-C", str(paths.ROOT), "rev-parse", "--short", "HEAD"])
    return {
        "python": sys.version.split()[0],
        "relayguard": f"{_pkg('relayguard')} (git {git})",
        "aiosmtpd": _pkg("aiosmtpd"),
        "aiosmtplib": _pkg("aiosmtplib"),
        "sqlite": sqlite3.sqlite_version,
        "postfix": _cmd(["postconf", "-d", "-h", "mail_version"]),
        "haraka": haraka,
        "node": _cmd(["node", "--version"]),
        "postgresql": _cmd(["psql", paths.PG_ADMIN_URL, "-tAc", "show server_version"]),
    }
