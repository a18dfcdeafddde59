"""Shared by the tests: start a real worker subprocess on a temporary socket, talk HTTP to it."""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

TESTS = os.path.dirname(os.path.abspath(__file__))
PYTHON_DIR = os.path.dirname(TESTS)
ROOT = os.path.dirname(PYTHON_DIR)
APPS = os.path.join(TESTS, "apps")
EXAMPLES = os.path.join(ROOT, "examples")

TIMEOUT = 20.0  # the bound of every wait in the tests; nothing normally comes close


def app_path(name):
    return os.path.join(APPS, name)


def worker_env(extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PYTHON_DIR, env.get("PYTHONPATH")) if p)
    env.pop("FIDDLER_WORKER_PARENT_PID", None)
    env.pop("FIDDLER_WORKER_SOCKET", None)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def wait_until(predicate, what, timeout=TIMEOUT, interval=0.02):
    """Poll predicate until true (returns its value) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def pid_alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def can_connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class Worker:
    """A `python3 -m fiddler_worker ARGS...` subprocess serving on a fresh temporary socket."""

    def __init__(self, *args, env=None, wait=True, socket_arg=True, cwd=None):
        self.dir = tempfile.mkdtemp(prefix="fw")  # short: a Unix socket path has ~107 bytes
        self.path = os.path.join(self.dir, "w.sock")
        self.log_path = os.path.join(self.dir, "worker.log")
        extra = {"FIDDLER_WORKER_ID": "7", "GATE_DIR": self.dir}
        if env:
            extra.update(env)
        cmd = [sys.executable, "-m", "fiddler_worker"] + list(args)
        if socket_arg:
            cmd += ["--socket", self.path]
        else:
            extra.setdefault("FIDDLER_WORKER_SOCKET", self.path)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=worker_env(extra), stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=cwd or self.dir)
        if wait:
            self.wait_ready()

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_ready(self):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("the worker exited with %s:\n%s" % (self.proc.returncode, self.log()))
            return can_connect(self.path)
        wait_until(ready, "the worker's socket")

    def wait_exit(self, timeout=TIMEOUT):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("the worker did not exit within %.0f s:\n%s" % (timeout, self.log()))

    def gate(self, name):
        """Create the file `name` in the worker's GATE_DIR (opens a gate the test apps wait on)."""
        with open(os.path.join(self.dir, name), "w"):
            pass

    def gate_path(self, name):
        return os.path.join(self.dir, name)

    def connection(self, timeout=TIMEOUT):
        return UnixHTTPConnection(self.path, timeout)

    def raw(self, timeout=TIMEOUT):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(self.path)
        return s

    def request(self, method, path, body=None, headers=None):
        """(status, headers, body) of one request on a fresh connection."""
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.headers, r.read()
        finally:
            conn.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class WorkerTest(unittest.TestCase):
    """A test case with a helper to start workers that are always stopped afterwards."""

    def start(self, *args, **kwargs):
        w = Worker(*args, **kwargs)
        self.addCleanup(w.stop)
        return w


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket."""

    def __init__(self, path, timeout=TIMEOUT):
        super().__init__("worker", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class RawResponse:
    __slots__ = ("status", "headers", "body", "chunks", "complete")

    def header(self, name):
        return self.headers.get(name.lower())


def read_head(f):
    """(status, headers as a dict of lower-case names) from a binary file over the socket."""
    line = f.readline()
    if not line:
        raise ConnectionError("closed before a status line")
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    status = int(parts[1])
    headers = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def read_chunk(f):
    """The next chunk of a chunked body: bytes, b"" for the last chunk, None if the stream
    ended without one (the connection closed mid-stream)."""
    line = f.readline()
    if not line.endswith(b"\r\n"):
        return None
    size = int(line.split(b";")[0], 16)
    if size == 0:
        f.readline()  # the CRLF after the (absent) trailers
        return b""
    data = f.read(size)
    if len(data) < size or f.read(2) != b"\r\n":
        return None
    return data


def read_response(f, method="GET"):
    """One whole response (Content-Length, chunked, or until close) from a binary file."""
    r = RawResponse()
    r.status, r.headers = read_head(f)
    r.chunks = []
    r.complete = True
    if method == "HEAD" or r.status in (204, 304) or 100 <= r.status < 200:
        r.body = b""
    elif r.headers.get("transfer-encoding") == "chunked":
        while True:
            chunk = read_chunk(f)
            if chunk is None:
                r.complete = False
                break
            if chunk == b"":
                break
            r.chunks.append(chunk)
        r.body = b"".join(r.chunks)
    elif "content-length" in r.headers:
        r.body = f.read(int(r.headers["content-length"]))
    else:
        r.body = f.read()
    return r


def closed_by_peer(sock):
    """True if the peer closed sock (reads EOF within the socket's timeout)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def encode_batch(items):
    """A batch body from (method, path, query, headers, body) tuples (the tests' own encoder)."""
    out = bytearray()
    for method, path, query, headers, body in items:
        meta = {"method": method, "path": path, "query": query,
                "headers": [list(h) for h in headers], "body_len": len(body)}
        out += json.dumps(meta).encode() + b"\n" + body
    return bytes(out)


def decode_batch(body):
    """[(status, headers, body)] from a batch answer (the tests' own decoder); fails on
    trailing bytes."""
    items = []
    pos = 0
    while pos < len(body):
        nl = body.index(b"\n", pos)
        meta = json.loads(body[pos:nl])
        start = nl + 1
        end = start + meta["body_len"]
        assert end <= len(body), "body_len past the end"
        items.append((meta["status"], [tuple(h) for h in meta["headers"]], body[start:end]))
        pos = end
    return items


def post_batch(worker, items, count=None):
    """(status, headers, body) of POST /.fiddler/batch with `items`."""
    body = encode_batch(items)
    headers = {"X-Fiddler-Batch": str(len(items) if count is None else count),
               "Content-Type": "application/x-fiddler-batch"}
    return worker.request("POST", "/.fiddler/batch", body=body, headers=headers)
