"""Bare forwarder: aiosmtpd in, aiosmtplib out, nothing else (no store, no policy, no parsing).

What the stack costs with nothing added; relayguard is compared against it. Upstream connections are
pooled and reused, as any sane forwarder would. Hostnames are explicit so nothing waits on a lookup.
  python bench/baseline_forwarder.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session


class Forwarder:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[aiosmtplib.SMTP] = []  # connected clients not in use (LIFO keeps few of them warm)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        client = self.idle.pop() if self.idle else None
        try:
            if client is None or not client.is_connected:
                client = aiosmtplib.SMTP(
                    hostname=self.host,
                    port=self.port,
                    local_hostname="bench-forwarder",
                    use_tls=False,
                    start_tls=False,
                )
                await client.connect()
            await client.sendmail(envelope.mail_from, envelope.rcpt_tos, envelope.original_content or b"")
        except Exception as exc:
            return f"451 4.4.1 upstream failed: {type(exc).__name__}"
        self.idle.append(client)
        return "250 2.0.0 forwarded"


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    handler = Forwarder(*upstream)

    def factory() -> Any:
        return SMTP(
            handler, hostname="bench-forwarder", ident="bench-forwarder", data_size_limit=64 * 1024 * 1024
        )

    server = await asyncio.get_running_loop().create_server(factory, *listen, backlog=1024)
    async with server:
        await server.serve_forever()


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--listen", type=_addr, required=True)
    ap.add_argument("--upstream", type=_addr, required=True)
    args = ap.parse_args()
    asyncio.run(serve(args.listen, args.upstream))
