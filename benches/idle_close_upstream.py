#!/usr/bin/env python3
"""An HTTP/1.1 upstream that closes a kept-alive connection after IDLE seconds without a request,
as uvicorn, Node and llama-server do after 5 s (docs/BENCHMARKS.md 19.3).

    python3 benches/idle_close_upstream.py PORT IDLE_SECONDS
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
IDLE = float(sys.argv[2])
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE
    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
