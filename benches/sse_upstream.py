#!/usr/bin/env python3
"""The upstream of benches/stream.sh's proxied rows: an HTTP/1.1 server on 127.0.0.1 that answers
every GET as a model server streams tokens: `200`, `text/event-stream`, chunked, its head at
once, then after DELAY_MS (default 2, the model reading its prompt) a first chunk holding the
wall-clock time (ns since the epoch) at which it was written, then `end`. `GET /whole` is
answered the same way but whole: `Content-Length`, the head written at once, the body (the time
it was written, then `end`) written DELAY_MS later, as a server that writes its head before its
body does. `GET /tokens` streams TOKENS chunks (default 20), TOKEN_GAP_MS apart (default 1, a
fast model), each the time it was written. Nagle's algorithm is left on, as Python's `http.server` and cpp-httplib (by default)
leave it. One thread per
connection; kept-alive connections are served request after request. It prints
`sse_upstream listening on PORT` and stops by itself after --max-seconds (or on SIGTERM).

    python3 benches/sse_upstream.py [--port 0] [--delay-ms 2] [--max-seconds 600] [--tokens 20]
        [--token-gap-ms 1]
"""

import argparse
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--delay-ms", type=float, default=2.0)
    p.add_argument("--max-seconds", type=float, default=600.0)
    p.add_argument("--tokens", type=int, default=20)
    p.add_argument("--token-gap-ms", type=float, default=1.0)
    a = p.parse_args()
    delay = a.delay_ms / 1000.0
    gap = a.token_gap_ms / 1000.0

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if self.path == "/whole":
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(b"%d\nend\n" % time.time_ns())))
                self.end_headers()
                self.wfile.flush()
                time.sleep(delay)
                self.wfile.write(b"%d\nend\n" % time.time_ns())
                self.wfile.flush()
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            time.sleep(delay)
            if self.path == "/tokens":
                for _ in range(a.tokens):
                    line = b"%d\n" % time.time_ns()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                    time.sleep(gap)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                return
            for line in (b"%d\n" % time.time_ns(), b"end\n"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    server.daemon_threads = True
    print("sse_upstream listening on %d" % server.server_address[1], flush=True)
    threading.Timer(a.max_seconds, server.shutdown).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
