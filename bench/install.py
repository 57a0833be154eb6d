"""Installs what the bench needs, non-interactively and only when missing.

- Debian ``postfix`` for smtp-source, smtp-sink and the Postfix path. Its debconf question is answered
  "No configuration", so the package sets up no system mail service; ``apt-get update`` runs only if
  the install fails without it.
- Haraka from npm into bench/.cache (gitignored).
- /etc/postfix/main.cf lists our private config dir in ``alternate_config_directories``: Postfix runs
  as root from another config dir only if the default one names it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import paths
import procs

MAIN_CF = Path("/etc/postfix/main.cf")


def _log(msg: str) -> None:
    print(f"[install] {msg}", flush=True)


def ensure_postfix() -> None:
    if shutil.which("smtp-source") and shutil.which("smtp-sink") and shutil.which("postfix"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["debconf-set-selections"],
        input="postfix postfix/main_mailer_type select No configuration\n",
        text=True,
        check=True,
        env=env,
    )
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postfix"]
    _log("apt-get install postfix")
    if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode != 0:
        _log("install failed; apt-get update, then again")
        procs.run_checked(["apt-get", "update", "-q"], timeout=300, env=env)
        procs.run_checked(cmd, timeout=600, env=env)


def ensure_alternate_config(confdir: Path) -> None:
    """Add ``confdir`` to alternate_config_directories in the system main.cf, keeping what is there."""
    confdir.mkdir(parents=True, exist_ok=True)
    if not MAIN_CF.exists():
        MAIN_CF.write_text(
            "# Created by relayguard's bench/install.py (no system mail service is set up).\n"
            "compatibility_level = 3.6\n"
        )
    current = procs.run_checked(
        ["postconf", "-c", str(MAIN_CF.parent), "-h", "alternate_config_directories"]
    ).strip()
    listed = [d.strip() for d in current.replace(",", " ").split()]
    if str(confdir) in listed:
        return
    value = ", ".join([*listed, str(confdir)])
    _log(f"alternate_config_directories += {confdir}")
    procs.run_checked(
        ["postconf", "-c", str(MAIN_CF.parent), "-e", f"alternate_config_directories = {value}"]
    )


def ensure_haraka() -> None:
    if paths.HARAKA_BIN.exists():
        return
    if not shutil.which("npm"):
        _log("npm not found: the Haraka path will be skipped")
        return
    paths.CACHE.mkdir(parents=True, exist_ok=True)
    if not (paths.CACHE / "package.json").exists():
        (paths.CACHE / "package.json").write_text('{"name": "relayguard-bench-cache", "private": true}\n')
    _log("npm install Haraka (into bench/.cache)")
    procs.run_checked(
        ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(paths.CACHE), "Haraka"], timeout=600
    )


def ensure_all() -> None:
    ensure_postfix()
    ensure_alternate_config(paths.Postfix.confdir)
    ensure_haraka()
