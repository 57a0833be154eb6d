"""Medians, ratios and target checks from the raw measurements, and the Markdown of RESULTS.md."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

import measure

RELAY_PREFIX = "relayguard"
TARGET_P99_MS = 50.0
TARGET_RSS_FACTOR = 5.0


def _median(xs: list[float], digits: int = 1) -> float | None:
    return round(statistics.median(xs), digits) if xs else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def summarise(runs: list[dict[str, Any]], sizes: dict[str, int]) -> dict[str, Any]:
    """Per (kind, workload, path): medians over repeats; ratios vs Postfix and the bare forwarder."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[(r["kind"], r["workload"], r["path"])].append(r)
    rows: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for (kind, workload, path), rs in groups.items():
        good = [r for r in rs if r["ok"]]
        row: dict[str, Any] = {
            "repeats": len(rs),
            "ok": len(good),
            "errors": sorted({r["error"] for r in rs if r["error"]}),
            # An incomplete run still measured a rate (what the sink got in the time allowed): kept, marked.
            "msgs_per_s": _median([r["msgs_per_s"] for r in rs if r["msgs_per_s"] is not None]),
            "msgs_per_s_all": [r["msgs_per_s"] for r in rs],
            "client_msgs_per_s": _median([r["client_msgs_per_s"] for r in rs if r["client_msgs_per_s"]]),
            "cpu_idle_pct": _median([r["cpu_idle_pct"] for r in rs if r["cpu_idle_pct"] is not None]),
            "cpu_ms_per_msg": _median([1000 * r["server_cpu_s"] / r["delivered"] for r in rs
                                       if r.get("server_cpu_s") is not None and r["delivered"]], 2),
            "sessions": rs[0]["sessions"],
            "peak_sessions": max((r["peak_sessions"] or 0) for r in rs),
        }
        if kind == "latency":
            for key in ("p50_ms", "p99_ms", "max_ms"):
                row[key] = _median([r["latency"][key] for r in good if r["latency"].get(key) is not None])
        if kind == "memory":
            row["peak_rss_sum_mib"] = _mib(max((r["peak_rss_sum_kib"] or 0) for r in rs))
            # What the message cost: the peak over the idle sum of the same run, largest of the repeats.
            row["growth_mib"] = _mib(max(((r["peak_rss_sum_kib"] or 0) - (r.get("idle_rss_sum_kib") or 0))
                                         for r in rs))
            row["peak_hwm_mib"] = _mib(max((r["peak_hwm_kib"] or 0) for r in rs))
            row["processes"] = max((r["processes"] or 0) for r in rs)
            row["message_mib"] = _mib(sizes.get(workload, 0) // 1024)
        rows[f"{kind}/{workload}"][path] = row
    for table in rows.values():
        pf, fw = table.get("postfix", {}).get("msgs_per_s"), table.get("forwarder", {}).get("msgs_per_s")
        for row in table.values():
            row["vs_postfix"] = _ratio(row["msgs_per_s"], pf)
            row["vs_forwarder"] = _ratio(row["msgs_per_s"], fw)
    return {"tables": rows, "targets": targets(rows)}


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


def targets(rows: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The issue's targets for every relayguard path that was measured: figure, bound, met or not."""
    out: list[dict[str, Any]] = []
    relay_paths = sorted({p for t in rows.values() for p in t if p.startswith(RELAY_PREFIX)})
    for path in relay_paths:
        for wl in ("1k", "100k"):
            row = rows.get(f"throughput/{wl}", {}).get(path, {})
            for other in ("postfix", "forwarder"):
                ratio = row.get(f"vs_{other}")
                out.append(
                    {
                        "path": path,
                        "target": f"{wl} end-to-end ≥ 1.0× {other}",
                        "value": ratio,
                        "met": ratio is not None and ratio >= 1.0,
                    }
                )
        lat = rows.get("latency/1k", {}).get(path, {})
        p99 = lat.get("p99_ms")
        out.append(
            {
                "path": path,
                "target": f"p99 accept latency < {TARGET_P99_MS:.0f} ms at 20 sessions",
                "value": p99,
                "met": p99 is not None and p99 < TARGET_P99_MS,
            }
        )
        for key, mem in rows.get("memory/25m", {}).items():
            if key != path:
                continue
            figures = (("peak_rss_sum_mib", "peak RSS"), ("growth_mib", "peak RSS growth over idle"))
            for figure, what in figures:
                factor = round(mem[figure] / mem["message_mib"], 2) if mem["message_mib"] else None
                out.append(
                    {
                        "path": path,
                        "target": f"{what} < {TARGET_RSS_FACTOR:.0f}× the message",
                        "value": factor,
                        "met": factor is not None and factor < TARGET_RSS_FACTOR,
                    }
                )
    return out


def _fmt(x: Any, suffix: str = "") -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:,.2f}{suffix}" if abs(x) < 10 else f"{x:,.0f}{suffix}"
    return f"{x}{suffix}"


def _capped(doc: dict[str, Any]) -> str:
    capped = doc.get("capped") or {}
    return "".join(f", {workload} {n}" for workload, n in sorted(capped.items()))


def markdown(doc: dict[str, Any]) -> str:
    s = doc["summary"]["tables"]
    labels: dict[str, str] = doc["paths"]
    lines = [
        "# relayguard benchmark results",
        "",
        f"Generated by `{doc['command']}` on {doc['finished']} ({doc['mode']} run, "
        f"{doc['repeats']} repeats{_capped(doc)}, paths alternating round-robin in every repeat). "
        "Raw figures: "
        "bench/out/results.json. How to read this: bench/README.md.",
        "",
    ]
    lines += _machine_section(doc)
    lines += [
        "## Throughput, end-to-end (messages/s, 20 concurrent sessions)",
        "",
        "Median of the repeats; the clock stops when the sink has every message (Postfix: and its "
        "queue is empty). *client* = rate at which the sender was answered. CPU idle is over both "
        "cores for the whole window, sessions = most ESTABLISHED connections seen on the path's port. "
        "*CPU ms/msg* = CPU time the path's own processes ran in the window (the load generator and the "
        "sink not counted) over the messages delivered: what each message costs, a figure that moves "
        "far less than msgs/s when other jobs share the cores.",
        "",
    ]
    for wl in ("1k", "100k", "xlsx"):
        table = s.get(f"throughput/{wl}")
        if table:
            lines += [
                f"### {doc['workloads'][wl]['label']} ({doc['workloads'][wl]['size']:,} bytes, "
                f"{doc['counts'][wl]} messages)",
                "",
            ]
            lines += _throughput_table(table, labels)
    lines += _latency_section(s.get("latency/1k", {}), labels, doc)
    lines += _memory_section(s.get("memory/25m", {}), labels, doc)
    lines += _targets_section(doc["summary"]["targets"])
    lines += _extras_section(doc.get("extras", {}))
    lines += _skipped_section(doc)
    lines += _commands_section(doc)
    return "\n".join(lines) + "\n"


def _machine_section(doc: dict[str, Any]) -> list[str]:
    m, v = doc["machine"], doc["versions"]
    return [
        "## Machine and versions",
        "",
        f"- {m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"load average at start {m['loadavg_at_start']}. Other jobs may share these cores: CPU idle is "
        "recorded with every figure.",
        "- " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "- **fsync is far cheaper on this virtual disk than on real hardware.** Postfix and relayguard both "
        "fsync every accepted message; on a real disk (or a VM with honest flushes) each fsync costs "
        "0.1–10 ms, so the durable paths (Postfix, relayguard) lose more against the bare forwarder and "
        "Haraka (which keep nothing on disk) than these figures show.",
        "",
    ]


def _throughput_table(table: dict[str, dict[str, Any]], labels: dict[str, str]) -> list[str]:
    out = [
        "| path | msgs/s | each repeat | client msgs/s | vs Postfix | vs forwarder | CPU ms/msg | CPU idle "
        "| sessions |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label in labels.items():
        row = table.get(key)
        if row is None:
            continue
        each = ", ".join(_fmt(x) for x in row["msgs_per_s_all"])
        note = f" ⚠ {row['ok']}/{row['repeats']} complete in time" if row["ok"] < row["repeats"] else ""
        out.append(
            f"| {label}{note} | **{_fmt(row['msgs_per_s'])}** | {each} | {_fmt(row['client_msgs_per_s'])} | "
            f"{_fmt(row['vs_postfix'], '×')} | {_fmt(row['vs_forwarder'], '×')} | "
            f"{_fmt(row['cpu_ms_per_msg'])} | {_load_cells(row)}"
        )
    return [*out, ""]



def _load_cells(row: dict[str, Any]) -> str:
    """The closing cells every measurement row carries: how busy the machine was, how many sessions."""
    return f"{_fmt(row['cpu_idle_pct'], ' %')} | {row['sessions']} (peak {row['peak_sessions']}) |"

def _latency_section(
    table: dict[str, dict[str, Any]], labels: dict[str, str], doc: dict[str, Any]
) -> list[str]:
    if not table:
        return []
    out = [
        "## Accept latency, 1 KiB (end of DATA → reply), 20 sessions",
        "",
        f"bench/latency_client.py, {doc['counts']['latency']} messages, one per connection, sessions "
        "back to back (closed loop: the server is kept busy, so this includes queueing). Medians of "
        "the repeats.",
        "",
        "| path | p50 ms | p99 ms | max ms | accepted msgs/s | CPU idle | sessions |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label in labels.items():
        row = table.get(key)
        if row:
            out.append(
                f"| {label} | {_fmt(row.get('p50_ms'))} | **{_fmt(row.get('p99_ms'))}** | "
                f"{_fmt(row.get('max_ms'))} | {_fmt(row['client_msgs_per_s'])} | {_load_cells(row)}"
            )
    return [*out, ""]


def _memory_section(
    table: dict[str, dict[str, Any]], labels: dict[str, str], doc: dict[str, Any]
) -> list[str]:
    if not table:
        return []
    size = doc["workloads"]["25m"]["size"]
    out = [
        "## Peak memory with one 25 MiB message",
        "",
        f"One {size:,}-byte message, one session, through a fresh instance. *sum* = the largest total "
        "VmRSS of the path's processes sampled every 20 ms (counts shared pages once per process, so "
        "it overstates many-process Postfix); *largest process* = the highest VmHWM of any one of them; "
        "*growth* = the peak sum less the same sum sampled idle just before the message (after a "
        f"{measure.SETTLE_S:.0f} s settle, so worker processes started in the background are in both).",
        "",
        "| path | peak RSS, sum (MiB) | largest process (MiB) | processes | × message | growth (MiB) "
        "| growth × message |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label in labels.items():
        row = table.get(key)
        if row:
            factor = round(row["peak_rss_sum_mib"] / row["message_mib"], 2) if row["message_mib"] else None
            err = f" ⚠ {row['errors'][0]}" if row["errors"] else ""
            growth = row.get("growth_mib")
            g_factor = (round(growth / row["message_mib"], 2)
                        if growth is not None and row["message_mib"] else None)
            out.append(
                f"| {label}{err} | {_fmt(row['peak_rss_sum_mib'])} | {_fmt(row['peak_hwm_mib'])} | "
                f"{row['processes']} | {_fmt(factor, '×')} | {_fmt(growth)} | {_fmt(g_factor, '×')} |"
            )
    return [*out, ""]


def _targets_section(targets: list[dict[str, Any]]) -> list[str]:
    out = ["## Targets (issue 7)", ""]
    if not targets:
        return [*out, "relayguard was not measured in this run (see *Not measured* below).", ""]
    out += ["| path | target | this run | met |", "|---|---|---:|---|"]
    for t in targets:
        out.append(
            f"| {t['path']} | {t['target']} | {_fmt(t['value'])} | {'yes' if t['met'] else '**no**'} |"
        )
    return [*out, ""]


def _extras_section(extras: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name, data in extras.items():
        out += [f"## {name}", ""]
        if "error" in data:
            out += [f"Not measured: {data['error']}", ""]
            continue
        out += ["| figure | value |", "|---|---:|"]
        out += [f"| {k} | {_fmt(v)} |" for k, v in list(_flatten(data["result"]))[:80]]
        out.append("")
    return out


def _flatten(obj: Any, prefix: str = "") -> Any:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            name = v.get("name") or v.get("format") if isinstance(v, dict) else None
            yield from _flatten(v, f"{prefix}[{name or i}]")
    else:
        yield prefix, obj


def _skipped_section(doc: dict[str, Any]) -> list[str]:
    skipped: dict[str, str] = doc.get("skipped", {})
    errors = sorted(
        {f"{r['path']} {r['kind']}/{r['workload']}: {r['error']}" for r in doc["runs"] if r["error"]}
    )
    if not skipped and not errors:
        return []
    out = ["## Not measured, or incomplete", ""]
    out += [f"- {k}: {why}" for k, why in skipped.items()]
    out += [f"- {e}" for e in errors[:30]]
    return [*out, ""]


def _commands_section(doc: dict[str, Any]) -> list[str]:
    out = ["## Exact commands", "", "```"]
    out += doc["commands"]
    return [*out, "```", ""]
