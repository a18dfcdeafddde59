#!/usr/bin/env python3
"""The anchors' slow upstream for benches/overflow.sh: a serial HTTP/1.1 server on 127.0.0.1 that
takes one connection at a time, reads one request head, sleeps JOB_MS (default 100) and answers
`200 slept 100 ms` with `Connection: close`. So its capacity is 10 requests/s, like bench_server's
`sleep100` crab endpoint, and whatever waits sits in its listen backlog. It prints
`slow_upstream listening on PORT` and stops by itself after --max-seconds (or on SIGTERM). With
--read-body it reads the request's body (its Content-Length) before it sleeps, as an upload's
upstream does (benches/upload_memory.sh).

    python3 benches/slow_upstream.py [--port 0] [--job-ms 100] [--max-seconds 600] [--read-body]
"""

import argparse
import socket
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--job-ms", type=float, default=100.0)
    p.add_argument("--max-seconds", type=float, default=600.0)
    p.add_argument("--backlog", type=int, default=128)
    p.add_argument("--read-body", action="store_true")
    a = p.parse_args()
    body = b"slept 100 ms\n"
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % len(body)
    ) + body
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", a.port))
    listener.listen(a.backlog)
    listener.settimeout(0.5)
    print(f"slow_upstream listening on {listener.getsockname()[1]}", flush=True)
    deadline = time.monotonic() + a.max_seconds
    while time.monotonic() < deadline:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        with conn:
            conn.settimeout(5.0)
            head = b""
            try:
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
            except OSError:
                continue
            if b"\r\n\r\n" not in head:
                continue
            if a.read_body and not read_body(conn, head):
                continue
            time.sleep(a.job_ms / 1000.0)
            try:
                conn.sendall(response)
            except OSError:
                pass
    return 0


def read_body(conn, head):
    """Read the rest of the body whose Content-Length `head` declares; False if it broke off."""
    fields, _, start = head.partition(b"\r\n\r\n")
    length = 0
    for line in fields.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    left = length - len(start)
    try:
        while left > 0:
            chunk = conn.recv(min(left, 65536))
            if not chunk:
                return False
            left -= len(chunk)
    except OSError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
