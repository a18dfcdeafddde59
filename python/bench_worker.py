#!/usr/bin/env python3
"""Requests per second of a worker over a Unix socket, from a raw-socket client.

Starts the worker (fiddler_worker by default, or gunicorn for comparison) on a temporary socket,
sends requests one at a time (single in-flight, like fiddler_crab) and prints the median req/s
of a few rounds. The client is Python too and shares the machine, so the figure is a floor.

    python3 python/bench_worker.py                       # examples/hello/app.py, keep-alive
    python3 python/bench_worker.py --new-connection      # a fresh connection per request
    python3 python/bench_worker.py --wsgi                # the same answer through --wsgi
    .venv/bin/python python/bench_worker.py --gunicorn   # gunicorn (sync worker, one process)

gunicorn's sync worker closes the connection after every response, so --gunicorn implies
--new-connection unless --worker-class gthread is given (which keeps connections alive).
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HELLO = os.path.join(ROOT, "examples", "hello", "app.py")

WSGI_HELLO = '''\
def application(environ, start_response):
    body = b'{"hello":"world"}'
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def start(args, tmp):
    path = os.path.join(tmp, "w.sock")
    env = dict(os.environ)
    env["PYTHONPATH"] = HERE + os.pathsep + tmp + os.pathsep + env.get("PYTHONPATH", "")
    if args.gunicorn:
        exe = shutil.which("gunicorn", path=os.path.dirname(sys.executable)) or shutil.which("gunicorn")
        if exe is None:
            sys.exit("gunicorn not found (install it in the Python running this script)")
        cmd = [exe, "-w", "1", "-k", args.worker_class, "--bind", "unix:" + path,
               "--log-level", "warning", "bench_hello_wsgi:application"]
    elif args.wsgi:
        cmd = [sys.executable, "-m", "fiddler_worker", "--wsgi", "bench_hello_wsgi:application",
               "--socket", path]
    else:
        cmd = [sys.executable, "-m", "fiddler_worker", args.app, "--socket", path]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.close()
            return proc, path
        except OSError:
            if proc.poll() is not None:
                sys.exit("the worker exited with status %d" % proc.returncode)
            time.sleep(0.05)
    proc.kill()
    sys.exit("the worker did not listen within 30 s")


def read_response(sock, buf):
    """Read one response with Content-Length from sock; returns the rest of buf."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before a whole head")
        buf += data
    head = bytes(buf[:end]).lower()
    i = head.find(b"content-length:")
    length = int(head[i + 15:head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None])
    if not head.startswith(b"http/1.1 200"):
        raise ConnectionError("unexpected answer: %r" % bytes(buf[:end]))
    need = end + 4 + length
    while len(buf) < need:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed mid-body")
        buf += data
    del buf[:need]
    return buf


def run_round(path, n, new_connection):
    request = b"GET / HTTP/1.1\r\nHost: worker\r\n\r\n"
    buf = bytearray()
    t0 = time.perf_counter()
    if new_connection:
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.sendall(request)
            buf = read_response(s, bytearray())
            s.close()
    else:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        for _ in range(n):
            s.sendall(request)
            buf = read_response(s, buf)
        s.close()
    return n / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--app", default=HELLO, help="the fiddler_worker app (default: examples/hello)")
    p.add_argument("--wsgi", action="store_true", help="serve a hello WSGI app through --wsgi")
    p.add_argument("--gunicorn", action="store_true", help="serve the hello WSGI app with gunicorn")
    p.add_argument("--worker-class", default="sync", help="gunicorn's -k (default: sync)")
    p.add_argument("--new-connection", action="store_true", help="a new connection per request")
    p.add_argument("--requests", type=int, default=20000, help="requests per round (default 20000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds; the median is reported (default 5)")
    args = p.parse_args()
    new_connection = args.new_connection or (args.gunicorn and args.worker_class == "sync")

    tmp = tempfile.mkdtemp(prefix="fwbench")
    with open(os.path.join(tmp, "bench_hello_wsgi.py"), "w") as f:
        f.write(WSGI_HELLO)
    proc, path = start(args, tmp)
    try:
        run_round(path, min(1000, args.requests), new_connection)  # warm-up
        rates = [run_round(path, args.requests, new_connection) for _ in range(args.rounds)]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    server = ("gunicorn -k %s" % args.worker_class if args.gunicorn
              else "fiddler_worker --wsgi" if args.wsgi else "fiddler_worker")
    mode = "new connection per request" if new_connection else "one keep-alive connection"
    print("%s, %s, %d x %d requests: median %.0f req/s (min %.0f, max %.0f)"
          % (server, mode, args.rounds, args.requests, statistics.median(rates), min(rates),
             max(rates)))


if __name__ == "__main__":
    main()
