"""relayguard's benchmark driver (``make bench``): every path in one run, alternating, with medians.

  .venv/bin/python bench/run.py                  full run (~25 min), writes bench/RESULTS.md
  .venv/bin/python bench/run.py --quick          smoke run (<2 min), writes bench/out/RESULTS.quick.md
  .venv/bin/python bench/run.py --only relayguard-sqlite --only postfix --repeats 5

Installs postfix (smtp-source, smtp-sink) and Haraka when missing. All traffic goes to 127.0.0.1;
every count and wait is bounded; every process started is stopped by its pid, on Ctrl-C too.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import install
import measure
import messages
import paths
import procs
import report
import sysinfo

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"


@dataclass(frozen=True)
class Plan:
    repeats: int
    counts: dict[str, int]  # messages per throughput measurement, by workload; "latency" for the client
    timeouts: dict[str, float]  # seconds one measurement may take, by workload
    memory: bool = True
    # Workloads measured in fewer repeats than the rest: the xlsx one takes minutes a repeat
    # and moves little between repeats; the quick ones are where a noisy machine needs more.
    capped: dict[str, int] = field(default_factory=dict)

    def repeats_of(self, workload: str) -> int:
        return min(self.repeats, self.capped.get(workload, self.repeats))


# Timeouts bound every measurement: a path slower than count/timeout is reported from what the sink
# got in that time (marked incomplete), which keeps a full run near 25 minutes whatever the relay does.
# Five repeats, the xlsx workload three: on a shared machine one repeat in three or four of a
# quick workload can run 20-30 % off the others (2026-12-07: the forwarder at 964, 667 and 873
# msgs/s in one run), and a median of three then rests on one figure either side.
FULL = Plan(
    repeats=5,
    counts={"1k": 4000, "100k": 500, "xlsx": 60, "latency": 1000},
    timeouts={"1k": 45, "100k": 45, "xlsx": 60, "latency": 60, "25m": 90},
    capped={"xlsx": 3},
)
QUICK = Plan(
    repeats=1,
    counts={"1k": 200, "100k": 50, "xlsx": 5, "latency": 100},
    timeouts={"1k": 8, "100k": 8, "xlsx": 10, "latency": 10, "25m": 45},
    memory=False,
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run: small counts, one repeat")
    ap.add_argument("--repeats", type=int,
                    help="repeats of every measurement (full run: 5, the xlsx workload 3)")
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATH",
        help="measure only these paths (repeatable): " + ", ".join(p.key for p in paths.all_paths()),
    )
    ap.add_argument(
        "--workloads",
        help="comma list of 1k, 100k, xlsx, latency, memory (default: all; --quick leaves out memory)",
    )
    ap.add_argument(
        "--relay-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra env for relayguard (e.g. RELAYGUARD_DELIVERY__WORKERS=8)",
    )
    ap.add_argument("--no-install", action="store_true", help="do not install postfix or Haraka")
    ap.add_argument(
        "--no-extras",
        action="store_true",
        help="skip scan_bench.py and policy_bench.py (--quick always does)",
    )
    ap.add_argument(
        "--markdown",
        type=Path,
        help="where to write the table (default: bench/RESULTS.md, "
        "or bench/out/RESULTS.quick.md with --quick)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, stores) for inspection")
    return ap.parse_args(argv)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _on_signal(signum: int, _frame: object) -> None:
    # SIGTERM/SIGHUP take the same way out as Ctrl-C, so the finally blocks stop every child.
    raise KeyboardInterrupt(f"signal {signum}")


def choose_paths(args: argparse.Namespace) -> tuple[list[paths.Path_], dict[str, str]]:
    relay_env = dict(kv.split("=", 1) for kv in args.relay_env)
    wanted = {w for item in args.only for w in item.split(",")}
    chosen: list[paths.Path_] = []
    skipped: dict[str, str] = {}
    for path in paths.all_paths(relay_env):
        if wanted and path.key not in wanted:
            continue
        why = path.unavailable()
        if why:
            skipped[path.key] = why
        else:
            chosen.append(path)
    return chosen, skipped


def rotated(items: list[paths.Path_], by: int) -> list[paths.Path_]:
    """Each repeat starts with a different path, so no path always runs first (or after a hot one)."""
    k = by % len(items) if items else 0
    return items[k:] + items[:k]


def measure_all(
    chosen: list[paths.Path_],
    plan: Plan,
    wanted: set[str],
    workloads: dict[str, messages.Workload],
    bench: measure.Bench,
) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for rep in range(plan.repeats):
        for path_order_kind in ("1k", "100k", "xlsx", "latency"):
            if path_order_kind not in wanted or rep >= plan.repeats_of(path_order_kind):
                continue
            for path in rotated(chosen, rep):
                if path_order_kind == "latency":
                    res = bench.latency(
                        path, workloads["1k"], plan.counts["latency"], rep, plan.timeouts["latency"]
                    )
                else:
                    res = bench.throughput(
                        path,
                        workloads[path_order_kind],
                        plan.counts[path_order_kind],
                        rep,
                        plan.timeouts[path_order_kind],
                    )
                _log(_one_line(res))
                runs.append(res.as_dict())
    if "memory" in wanted:
        for path in chosen:
            if path.has_memory:
                res = bench.memory(path, workloads["25m"], 0, plan.timeouts["25m"])
                _log(_one_line(res))
                runs.append(res.as_dict())
    return runs


def _one_line(r: measure.Result) -> str:
    fig = (
        f"p50 {r.latency.get('p50_ms')} ms p99 {r.latency.get('p99_ms')} ms"
        if r.kind == "latency"
        else f"peak RSS {(r.peak_rss_sum_kib or 0) // 1024} MiB"
        if r.kind == "memory"
        else f"{r.msgs_per_s} msgs/s (client {r.client_msgs_per_s})"
    )
    status = "ok" if r.ok else f"FAILED {r.error}"
    return f"{r.kind:10} {r.workload:5} #{r.repeat} {r.path:20} {fig}, idle {r.cpu_idle_pct}% — {status}"


def run_extras(timeout: float, workdir: Path) -> dict[str, Any]:
    """scan_bench.py and policy_bench.py (written by others) when present; their JSON goes in as is."""
    extras: dict[str, Any] = {}
    for name, title in (
        ("scan_bench.py", "Scan throughput per format"),
        ("policy_bench.py", "Policy evaluation time"),
    ):
        script = BENCH / name
        if script.exists():
            _log(f"running {name}")
            extras[title] = _run_extra(script, timeout, workdir / f"{script.stem}.json")
    return extras


def _run_extra(script: Path, timeout: float, out: Path) -> dict[str, Any]:
    """``--json OUT`` as agreed; a script whose ``--json`` is a flag printing to stdout is read too."""
    errors: list[str] = []
    for argv in ([sys.executable, str(script), "--json", str(out)], [sys.executable, str(script), "--json"]):
        try:
            res = subprocess.run(
                argv, cwd=paths.ROOT, capture_output=True, text=True, timeout=timeout, check=False
            )
        except (subprocess.SubprocessError, OSError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        if res.returncode != 0:
            errors.append(f"exit {res.returncode}: {res.stderr.strip()[-200:]}")
            continue
        try:
            result = json.loads(out.read_text()) if out.exists() else json.loads(res.stdout)
        except json.JSONDecodeError as exc:
            errors.append(f"not JSON: {exc}")
            continue
        shown = ["--json", "OUT"] if out.exists() else ["--json"]
        return {"command": shlex.join([".venv/bin/python", f"bench/{script.name}", *shown]), "result": result}
    return {"error": "; ".join(errors)[:400]}


def commands(chosen: list[paths.Path_], plan: Plan) -> list[str]:
    msgs = "bench/.cache/messages"
    return [
        "# driver",
        "cd /work/main && " + shlex.join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
        "# sink (one per measurement; counts completed DATA via its -c counter)",
        "smtp-sink -u nobody -c 127.0.0.1:SINK 1024",
        "# load, throughput (N = "
        + ", ".join(f"{k}: {v}" for k, v in plan.counts.items() if k != "latency")
        + ")",
        f"smtp-source -s 20 -m N -F {msgs}/{{1k,100k,xlsx}}.eml -f {messages.SENDER} -t {messages.RECIPIENT} "
        "127.0.0.1:PORT",
        "# load, latency",
        f".venv/bin/python bench/latency_client.py --port PORT --message {msgs}/1k.eml --sessions 20 "
        f"--count {plan.counts['latency']}",
        "# load, memory",
        f"smtp-source -s 1 -m 1 -F {msgs}/25m.eml -f {messages.SENDER} -t {messages.RECIPIENT} "
        "127.0.0.1:PORT",
        f"# warm-up before every measurement: {measure.WARMUP} × 1k.eml over 5 sessions",
        "# paths",
        *[f"{p.key}: {p.command}" for p in chosen],
    ]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.repeats:
        plan = replace(plan, repeats=args.repeats)
    default = "1k,100k,xlsx,latency" + (",memory" if plan.memory else "")
    wanted = set((args.workloads or default).split(","))
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    if not args.no_install:
        install.ensure_all()
    chosen, skipped = choose_paths(args)
    for key, why in skipped.items():
        _log(f"skipping {key}: {why}")
    workloads = messages.prepare(paths.CACHE)
    workdir = Path(tempfile.mkdtemp(prefix="relayguard-bench-"))
    os.chmod(workdir, 0o755)  # postfix's unprivileged processes must reach the queue below it
    started = datetime.now(UTC)
    doc: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "repeats": plan.repeats,
        "capped": {k: plan.repeats_of(k) for k in plan.capped if plan.repeats_of(k) < plan.repeats},
        "command": shlex.join(["bench/run.py", *argv]) if argv else "bench/run.py",
        "machine": sysinfo.machine(),
        "versions": sysinfo.versions(),
        "started": started.isoformat(timespec="seconds"),
    }
    try:
        _log(f"paths: {', '.join(p.key for p in chosen)}; work dir {workdir}")
        runs = measure_all(chosen, plan, wanted, workloads, measure.Bench(workdir, workloads["1k"]))
        # The other scripts take minutes; a smoke run leaves them out.
        extras = {} if args.no_extras or args.quick else run_extras(600, workdir)
    except KeyboardInterrupt:
        _log("interrupted: stopping everything this run started")
        return 130
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    doc.update(
        {
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "paths": {p.key: p.label for p in chosen},
            "skipped": skipped,
            "workloads": {
                k: {"label": w.label, "size": w.size, "file": str(w.path.relative_to(paths.ROOT))}
                for k, w in workloads.items()
            },
            "counts": plan.counts,
            "sessions": measure.SESSIONS,
            "commands": commands(chosen, plan),
            "runs": runs,
            "extras": extras,
        }
    )
    doc["summary"] = report.summarise(runs, {k: w.size for k, w in workloads.items()})
    write_outputs(doc, args)
    return 0


def write_outputs(doc: dict[str, Any], args: argparse.Namespace) -> None:
    OUT.mkdir(exist_ok=True)
    name = "results.quick.json" if args.quick else "results.json"
    (OUT / name).write_text(json.dumps(doc, indent=2) + "\n")
    md_path = args.markdown or (OUT / "RESULTS.quick.md" if args.quick else BENCH / "RESULTS.md")
    md_path.write_text(report.markdown(doc))
    _log(f"wrote {OUT / name} and {md_path}")
    for t in doc["summary"]["targets"]:
        _log(f"target {t['path']}: {t['target']}: {t['value']} {'met' if t['met'] else 'MISSED'}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
