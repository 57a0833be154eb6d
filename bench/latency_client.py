"""Accept latency: time from sending the end of DATA (``CRLF.CRLF``) to reading the server's reply.

A small asyncio SMTP client of our own (no library between us and the socket, so the timer brackets
only the server's work). ``--sessions`` connections run at once; each sends messages back to back,
one per connection as smtp-source does, until ``--count`` messages in all have been sent.
  python bench/latency_client.py --port PORT --message FILE [--sessions 20] [--count 1000] [--json OUT]
Prints (and writes) JSON: p50/p90/p99/max in ms, the client-side rate, and the replies that were not 250.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

HOST = "127.0.0.1"  # loopback only


def wire_body(raw: bytes) -> bytes:
    """The message as DATA sends it: CRLF lines, leading dots doubled, then the terminating dot."""
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    stuffed = [b"." + ln if ln.startswith(b".") else ln for ln in lines]
    return b"\r\n".join(stuffed) + b"\r\n"


async def reply(reader: asyncio.StreamReader) -> bytes:
    """One SMTP reply (all its lines); returns the last line, which carries the final code."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return line


async def expect(reader: asyncio.StreamReader, code: bytes) -> None:
    line = await reply(reader)
    if not line.startswith(code):
        raise RuntimeError(line.decode(errors="replace").strip())


async def one_message(port: int, body: bytes, sender: str, rcpt: str) -> tuple[float, bytes]:
    """Send one message on a fresh connection; (seconds from end of DATA to reply, reply line)."""
    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
    try:
        await expect(reader, b"220")
        writer.write(b"EHLO bench-latency.localdomain\r\n")
        await expect(reader, b"250")
        writer.write(f"MAIL FROM:<{sender}>\r\n".encode())
        await expect(reader, b"250")
        writer.write(f"RCPT TO:<{rcpt}>\r\n".encode())
        await expect(reader, b"250")
        writer.write(b"DATA\r\n")
        await expect(reader, b"354")
        writer.write(body)
        await writer.drain()
        start = time.perf_counter()
        writer.write(b".\r\n")
        final = await reply(reader)
        elapsed = time.perf_counter() - start
        writer.write(b"QUIT\r\n")
        await writer.drain()
        return elapsed, final
    finally:
        writer.close()


async def run(
    port: int, body: bytes, *, sessions: int, count: int, sender: str, rcpt: str, deadline: float
) -> dict[str, object]:
    latencies: list[float] = []
    failures: dict[str, int] = {}
    remaining = count

    async def session() -> None:
        nonlocal remaining
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            try:
                seconds, final = await one_message(port, body, sender, rcpt)
            except (OSError, RuntimeError) as exc:
                failures[str(exc)[:80]] = failures.get(str(exc)[:80], 0) + 1
                continue
            if final.startswith(b"250"):
                latencies.append(seconds)
            else:
                key = final.decode(errors="replace").strip()[:80]
                failures[key] = failures.get(key, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(sessions)))
    wall = time.perf_counter() - t0
    return summarise(latencies, failures, sessions=sessions, wall=wall)


def summarise(lat: list[float], failures: dict[str, int], *, sessions: int, wall: float) -> dict[str, object]:
    ms = sorted(x * 1000 for x in lat)

    def pct(p: float) -> float | None:
        if not ms:
            return None
        return round(ms[min(len(ms) - 1, int(p / 100 * len(ms)))], 2)

    return {
        "sessions": sessions,
        "accepted": len(ms),
        "failed": sum(failures.values()),
        "failures": failures,
        "wall_s": round(wall, 3),
        "client_msgs_per_s": round(len(ms) / wall, 1) if wall else None,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": round(ms[-1], 2) if ms else None,
        "mean_ms": round(statistics.fmean(ms), 2) if ms else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--message", type=Path, required=True)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--from", dest="sender", default="reception@oakfield-surgery.nhs.uk")
    ap.add_argument("--to", dest="rcpt", default="gp.referrals@nhs.net")
    ap.add_argument("--max-seconds", type=float, default=120, help="stop sending after this long")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    body = wire_body(args.message.read_bytes())
    result = asyncio.run(
        run(
            args.port,
            body,
            sessions=args.sessions,
            count=args.count,
            sender=args.sender,
            rcpt=args.rcpt,
            deadline=time.monotonic() + args.max_seconds,
        )
    )
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
