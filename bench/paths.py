"""The paths a message can take from smtp-source to smtp-sink. Each starts fresh for every measurement.

A path is a small class: ``start(sink_port, workdir)`` returns a running :class:`Server` (its port, the
pids whose memory counts, whether its queue is empty, how to stop it). To add one (e.g. relayguard with
another store), subclass :class:`Path_` and list it in :func:`all_paths`.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import procs

ROOT = Path(__file__).resolve().parent.parent  # the project checkout
CACHE = ROOT / "bench" / ".cache"
HARAKA_BIN = CACHE / "node_modules" / ".bin" / "haraka"
RELAYGUARD_BIN = ROOT / ".venv" / "bin" / "relayguard"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RELAY_SETTLE_S = 3.0
PG_BENCH_DB = "relayguard_bench"  # its own database, dropped and made anew per start; never `test`


@dataclass
class Server:
    """One running instance of a path."""

    port: int
    stop: Callable[[], None]
    pids: Callable[[], list[int]] = list  # roots of the process tree whose memory is the relay's
    drained: Callable[[], bool] = lambda: True  # for Postfix: its queue directories are empty
    extra: dict[str, str] = field(default_factory=dict)


class Path_:  # noqa: N801 - trailing underscore: pathlib's Path is imported here too
    key = ""
    label = ""
    command = ""  # how it is started, for RESULTS.md
    has_memory = True  # peak RSS is meaningful (a relay process exists)

    def unavailable(self) -> str | None:
        """Why this path cannot run here, or None."""
        return None

    def start(self, sink_port: int, workdir: Path) -> Server:
        raise NotImplementedError


class Ceiling(Path_):
    key, label, has_memory = "ceiling", "ceiling (smtp-source → smtp-sink)", False
    command = "no relay: smtp-source talks to smtp-sink directly"

    def start(self, sink_port: int, workdir: Path) -> Server:
        return Server(port=sink_port, stop=lambda: None)


class Forwarder(Path_):
    key, label = "forwarder", "bare forwarder (aiosmtpd → aiosmtplib)"
    command = ".venv/bin/python bench/baseline_forwarder.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:SINK"

    def start(self, sink_port: int, workdir: Path) -> Server:
        port = procs.free_port()
        argv = [
            sys.executable,
            str(ROOT / "bench" / "baseline_forwarder.py"),
            "--listen",
            f"{procs.LOOPBACK}:{port}",
            "--upstream",
            f"{procs.LOOPBACK}:{sink_port}",
        ]
        proc = procs.spawn("forwarder", argv, log=workdir / f"forwarder-{port}.log")
        procs.wait_smtp_banner(port, timeout=20, proc=proc)
        return Server(port=port, stop=lambda: procs.stop(proc), pids=lambda: [proc.pid])


class Postfix(Path_):
    key, label = "postfix", "Postfix relay (relayhost = sink)"
    command = (
        "postfix -c bench/.cache/postfix/conf start-fg (main.cf and master.cf written by bench/paths.py)"
    )
    confdir = CACHE / "postfix" / "conf"

    def unavailable(self) -> str | None:
        return None if shutil.which("postfix") else "postfix is not installed"

    def start(self, sink_port: int, workdir: Path) -> Server:
        port = procs.free_port()
        base = workdir / f"postfix-{port}"
        queue, data = base / "queue", base / "data"
        queue.mkdir(parents=True)
        data.mkdir()
        postfix_user = pwd.getpwnam("postfix")
        os.chown(data, postfix_user.pw_uid, postfix_user.pw_gid)  # postfix insists on owning it
        self.confdir.mkdir(parents=True, exist_ok=True)
        (self.confdir / "main.cf").write_text(self._main_cf(port, sink_port, queue, data))
        (self.confdir / "master.cf").write_text(self._master_cf(port))
        # `check` creates the queue subdirectories with the owners and modes postfix wants.
        procs.run_checked(["postfix", "-c", str(self.confdir), "check"])
        proc = procs.spawn(
            "postfix", ["postfix", "-c", str(self.confdir), "start-fg"], log=workdir / f"postfix-{port}.log"
        )
        procs.wait_smtp_banner(port, timeout=30, proc=proc)
        master_pid_file = queue / "pid" / "master.pid"
        if master_pid_file.exists():
            proc.extra_pids.append(int(master_pid_file.read_text().split()[0]))

        def stop() -> None:
            subprocess.run(
                ["postfix", "-c", str(self.confdir), "stop"], capture_output=True, timeout=30, check=False
            )
            procs.stop(proc)

        return Server(
            port=port,
            stop=stop,
            pids=lambda: [proc.pid, *proc.extra_pids],
            drained=lambda: _queue_empty(queue),
        )

    @staticmethod
    def _main_cf(port: int, sink_port: int, queue: Path, data: Path) -> str:
        return "\n".join(
            [
                "# Written by bench/paths.py for one measurement; a private relay on loopback only.",
                "compatibility_level = 3.6",
                f"queue_directory = {queue}",
                f"data_directory = {data}",
                "mail_owner = postfix",
                "setgid_group = postdrop",
                "inet_interfaces = 127.0.0.1",
                "inet_protocols = ipv4",
                "myhostname = bench-postfix.localdomain",
                "mydomain = localdomain",
                "mydestination =",
                "mynetworks = 127.0.0.0/8",
                "smtpd_relay_restrictions = permit_mynetworks, reject",
                f"relayhost = [127.0.0.1]:{sink_port}",
                "smtp_dns_support_level = disabled",  # the relayhost is an IP literal; never touch DNS
                "smtpd_peername_lookup = no",  # clients are on loopback; no name lookups at all
                "alias_maps =",
                "alias_database =",
                "local_transport = error:no local delivery in the bench",
                "biff = no",
                "message_size_limit = 67108864",
                # Postfix only writes logs under its allowed prefixes (/var by default).
                f"maillog_file = /var/log/relayguard-bench-postfix-{port}.log",
                "",
            ]
        )

    @staticmethod
    def _master_cf(port: int) -> str:
        """Debian's master.cf, without chroot (column 5 = n) and with smtpd on our loopback port."""
        dist = Path("/usr/share/postfix/master.cf.dist").read_text().splitlines()
        out: list[str] = []
        skipping = False
        for line in dist:
            if not line.strip() or line.startswith("#"):
                continue
            if line[0].isspace():  # continuation of the previous service
                if not skipping:
                    out.append(line)
                continue
            cols = line.split()
            skipping = cols[7] == "pipe"  # maildrop, uucp, …: users that do not exist here
            if skipping:
                continue
            cols[4] = "n"
            if cols[0] == "smtp" and cols[1] == "inet":
                cols[0] = f"127.0.0.1:{port}"
            out.append("  ".join(cols))
        return "\n".join(out) + "\n"


def _queue_empty(queue: Path) -> bool:
    for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
        for _dir, _subdirs, files in os.walk(queue / sub):
            if files:
                return False
    return True


class Haraka(Path_):
    key, label = "haraka", "Haraka (relay + smtp_forward)"
    command = "bench/.cache/node_modules/.bin/haraka -c DIR (config written by bench/paths.py)"

    def unavailable(self) -> str | None:
        return None if HARAKA_BIN.exists() else "Haraka is not installed in bench/.cache"

    def start(self, sink_port: int, workdir: Path) -> Server:
        port = procs.free_port()
        home = workdir / f"haraka-{port}"
        procs.run_checked([str(HARAKA_BIN), "-i", str(home)])
        cfg = home / "config"
        # nodes=cpus: what Haraka advises at start-up (it warns when unset) and its tuning guide says.
        (cfg / "smtp.ini").write_text(f"[main]\nlisten={procs.LOOPBACK}:{port}\nnodes=cpus\n")
        # Haraka's core asks DNS for the client's PTR on every connection (dns.reverse skips
        # /etc/hosts), which would send a query off this machine per message. Our first plugin answers
        # the lookup_rdns hook itself. No DNS plugins (mail_from.is_resolvable) either.
        (home / "plugins" / "bench_local_rdns.js").write_text(_HARAKA_RDNS_PLUGIN)
        (cfg / "plugins").write_text("bench_local_rdns\nrelay\nqueue/smtp_forward\n")
        (cfg / "relay.ini").write_text("[relay]\nacl=true\n")
        (cfg / "relay_acl_allow").write_text("127.0.0.0/8\n")
        (cfg / "smtp_forward.ini").write_text(
            f"host={procs.LOOPBACK}\nport={sink_port}\nenable_outbound=true\n"
        )
        (cfg / "me").write_text("bench-haraka.localdomain\n")
        connection = (cfg / "connection.ini").read_text()
        (cfg / "connection.ini").write_text(re.sub(r"(?m)^bytes=\d+", "bytes=67108864", connection))
        proc = procs.spawn("haraka", [str(HARAKA_BIN), "-c", str(home)], log=workdir / f"haraka-{port}.log")
        procs.wait_smtp_banner(port, timeout=30, proc=proc)
        return Server(port=port, stop=lambda: procs.stop(proc), pids=lambda: [proc.pid])


_HARAKA_RDNS_PLUGIN = """\
// Written by relayguard's bench: clients are on loopback, so rDNS is answered here, never by DNS.
exports.hook_lookup_rdns = function (next, connection) {
    next(OK, 'localhost')
}
"""


class Relayguard(Path_):
    """relayguard with the default policy; ``store`` picks the backend."""

    command = ".venv/bin/relayguard serve (RELAYGUARD_* env, see README)"

    def __init__(self, store: str, extra_env: dict[str, str] | None = None, processes: int = 1) -> None:
        self.store = store
        self.processes = processes
        many = f", {processes} processes" if processes > 1 else ""
        self.key = f"relayguard-{store}" + (f"-{processes}p" if processes > 1 else "")
        self.label = f"relayguard ({'SQLite' if store == 'sqlite' else 'PostgreSQL'}{many}, default policy)"
        self.extra_env = extra_env or {}

    def unavailable(self) -> str | None:
        if not RELAYGUARD_BIN.exists():
            return "no .venv/bin/relayguard"
        if not (ROOT / "policies" / "default.yaml").exists():
            return "no policies/default.yaml"
        if self.store == "postgresql" and not shutil.which("psql"):
            return "psql not found"
        return None

    def _store_url(self, workdir: Path, port: int) -> str:
        if self.store == "sqlite":
            return f"sqlite:///{workdir}/relayguard-{port}.db"
        for sql in (f"DROP DATABASE IF EXISTS {PG_BENCH_DB} WITH (FORCE)", f"CREATE DATABASE {PG_BENCH_DB}"):
            procs.run_checked(["psql", PG_ADMIN_URL, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        return f"postgresql://postgres@127.0.0.1:5432/{PG_BENCH_DB}"

    def env(self, port: int, sink_port: int, workdir: Path) -> dict[str, str]:
        return {
            "RELAYGUARD_SMTP__LISTEN": f"{procs.LOOPBACK}:{port}",
            "RELAYGUARD_UPSTREAM__HOST": procs.LOOPBACK,
            "RELAYGUARD_UPSTREAM__PORT": str(sink_port),
            "RELAYGUARD_UPSTREAM__TLS": "none",
            "RELAYGUARD_STORE__URL": self._store_url(workdir, port),
            "RELAYGUARD_POLICY__PATH": str(ROOT / "policies" / "default.yaml"),
            "RELAYGUARD_WEB__LISTEN": f"{procs.LOOPBACK}:{procs.free_port()}",
            "RELAYGUARD_SMTP__PROCESSES": str(self.processes),  # SO_REUSEPORT, docs/OPERATIONS.md
            **self.extra_env,
        }

    def start(self, sink_port: int, workdir: Path) -> Server:
        port = procs.free_port()
        env = {**os.environ, **self.env(port, sink_port, workdir)}
        proc = procs.spawn(
            self.key,
            [str(RELAYGUARD_BIN), "serve"],
            env=env,
            cwd=workdir,
            log=workdir / f"{self.key}-{port}.log",
        )
        procs.wait_smtp_banner(port, timeout=60, proc=proc)
        # The banner comes before the scan workers (forked and importing in the background) and,
        # with several processes, before the last of them listens: let that finish off the clock.
        time.sleep(RELAY_SETTLE_S)
        return Server(port=port, stop=lambda: procs.stop(proc), pids=lambda: [proc.pid])


def all_paths(relay_env: dict[str, str] | None = None) -> list[Path_]:
    return [
        Ceiling(),
        Forwarder(),
        Postfix(),
        Haraka(),
        Relayguard("sqlite", relay_env),
        Relayguard("postgresql", relay_env),
        # Two relay processes on one port: what a busy site on a 2-core box would run.
        Relayguard("sqlite", relay_env, processes=2),
        Relayguard("postgresql", relay_env, processes=2),
    ]
