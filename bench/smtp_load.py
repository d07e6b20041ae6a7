#!/usr/bin/env python3
"""SMTP load generator: many concurrent sessions sending N messages of a given size.

Reports messages/s accepted (until the last 250 after DATA) and, given the
Maildir directories the recipients deliver into, messages/s delivered (until
that many new files exist).  Talks only to loopback.

    bench/smtp_load.py --port 2525 --sessions 20 --messages 5000 --size 2048 \
        --domain bench.test --users 10 --maildirs '/path/*/Maildir'
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import random
import sys
import time


def count_files(patterns: list[str]) -> int:
    total = 0
    for pattern in patterns:
        for maildir in glob.glob(pattern):
            for sub in ("new", "cur"):
                try:
                    total += len(os.listdir(os.path.join(maildir, sub)))
                except FileNotFoundError:
                    pass
    return total


def message(size: int, n: int, domain: str, rcpt: str) -> bytes:
    head = (f"From: bench <bench@client.test>\r\nTo: <{rcpt}>\r\n"
            f"Subject: bench message {n}\r\nMessage-ID: <{n}.{time.time()}@client.test>\r\n\r\n")
    body_len = max(0, size - len(head))
    line = ("x" * 70 + "\r\n")
    body = (line * (body_len // len(line) + 1))[:body_len]
    body = body.rstrip("\r\n") + "\r\n"
    return (head + body).encode()


async def reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        if line[3:4] != b"-":
            return int(line[:3])


async def session(args, queue: asyncio.Queue, stats: dict) -> None:
    reader = writer = None
    sent_here = 0
    while True:
        try:
            n = queue.get_nowait()
        except asyncio.QueueEmpty:
            break
        if writer is None:
            reader, writer = await asyncio.open_connection(args.host, args.port)
            if await reply(reader) != 220:
                raise RuntimeError("bad greeting")
            writer.write(b"EHLO client.test\r\n")
            await reply(reader)
            sent_here = 0
        rcpt = f"user{random.randint(1, args.users)}@{args.domain}"
        t0 = time.monotonic()
        writer.write(f"MAIL FROM:<bench@client.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
        codes = [await reply(reader) for _ in range(3)]
        t1 = time.monotonic()
        if codes != [250, 250, 354]:
            stats["errors"] += 1
            writer.write(b"RSET\r\n")
            await reply(reader)
            continue
        data = message(args.size, n, args.domain, rcpt)
        writer.write(data + b".\r\n")
        code = await reply(reader)
        stats["envelope_ms"].append((t1 - t0) * 1000)
        stats["data_ms"].append((time.monotonic() - t1) * 1000)
        if code == 250:
            stats["accepted"] += 1
            stats["last_accept"] = time.monotonic()
        else:
            stats["errors"] += 1
        sent_here += 1
        if args.per_connection and sent_here >= args.per_connection:
            writer.write(b"QUIT\r\n")
            await reply(reader)
            writer.close()
            await writer.wait_closed()
            writer = None
    if writer is not None:
        writer.write(b"QUIT\r\n")
        try:
            await reply(reader)
        except ConnectionError:
            pass
        writer.close()


async def run(args) -> dict:
    queue: asyncio.Queue = asyncio.Queue()
    for n in range(args.messages):
        queue.put_nowait(n)
    stats = {"accepted": 0, "errors": 0, "last_accept": 0.0, "envelope_ms": [], "data_ms": []}
    before = count_files(args.maildirs) if args.maildirs else 0
    start = time.monotonic()
    await asyncio.gather(*(session(args, queue, stats) for _ in range(args.sessions)))
    accepted_s = stats["last_accept"] - start
    delivered_s = None
    if args.maildirs:
        deadline = time.monotonic() + args.wait
        while count_files(args.maildirs) - before < stats["accepted"]:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        delivered_s = time.monotonic() - start
    delivered = count_files(args.maildirs) - before if args.maildirs else None
    return {
        "target": f"{args.host}:{args.port}", "sessions": args.sessions,
        "messages": args.messages, "size": args.size, "accepted": stats["accepted"],
        "errors": stats["errors"], "accept_seconds": round(accepted_s, 3),
        "accepted_per_s": round(stats["accepted"] / accepted_s, 1) if accepted_s else None,
        "delivered": delivered,
        "deliver_seconds": round(delivered_s, 3) if delivered_s else None,
        "delivered_per_s": round(delivered / delivered_s, 1) if delivered_s else None,
        # client-side medians: MAIL+RCPT+DATA (pipelined) until 354, and data until 250
        "envelope_ms_p50": _median(stats["envelope_ms"]),
        "data_ms_p50": _median(stats["data_ms"]),
    }


def _median(values: list[float]) -> float | None:
    return round(sorted(values)[len(values) // 2], 2) if values else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--domain", default="bench.test")
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--per-connection", type=int, default=0,
                   help="messages per connection (0: one connection per session)")
    p.add_argument("--maildirs", action="append", default=[],
                   help="glob of the recipients' Maildirs, to measure delivery")
    p.add_argument("--wait", type=float, default=600, help="max seconds to wait for delivery")
    args = p.parse_args()
    if not args.host.startswith("127.") and args.host != "::1":
        print("smtp_load: loopback only", file=sys.stderr)
        return 2
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
