#!/usr/bin/env python3
"""A stand-in for llama-server's prompt cache (benches/affinity.sh): an HTTP/1.1 server with
SLOTS parallel slots (llama-server's `-np`) that keeps the CACHE conversations it served last, as
llama-server keeps the prompt each slot last read and, in its prompt cache in RAM (`--cache-ram`),
more. A request names its conversation in
`X-Session-Id`: one this server holds costs HIT_MS, one it does not (its whole history read
again) MISS_MS, in a slot of its own. The answer says which (`X-Cache: hit` or `miss`). Standard
library only; loopback; ends when killed.

    python3 benches/cache_upstream.py PORT [SLOTS [HIT_MS [MISS_MS [CACHE]]]]
"""
import collections
import http.server
import sys
import threading
import time

PORT = int(sys.argv[1])
SLOTS = int(sys.argv[2]) if len(sys.argv) > 2 else 4
HIT_MS = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
MISS_MS = float(sys.argv[4]) if len(sys.argv) > 4 else 20.0
CACHE = int(sys.argv[5]) if len(sys.argv) > 5 else SLOTS

held = collections.OrderedDict()  # conversation -> None, least recently used first
lock = threading.Lock()
slots = threading.Semaphore(SLOTS)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/health":
            self.answer(b"ok\n", "-")
            return
        self.do_POST()

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        session = self.headers.get("X-Session-Id", "")
        with slots:
            with lock:
                hit = session in held
                held[session] = None
                held.move_to_end(session)
                while len(held) > CACHE:
                    held.popitem(last=False)
            time.sleep((HIT_MS if hit else MISS_MS) / 1000)
        self.answer(b"done\n", "hit" if hit else "miss")

    def answer(self, body, cache):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Cache", cache)
        # Head and body in one write: with Nagle's algorithm on (http.server's default), a body
        # written after its head waits for the head's acknowledgement, up to 40 ms behind a
        # proxy that delays it (nginx; docs/BENCHMARKS.md 20.2), which would time the proxy's
        # acknowledgements, not its balancing.
        self._headers_buffer.append(b"\r\n" + body)
        self.flush_headers()

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


Server(("127.0.0.1", PORT), Handler).serve_forever()
