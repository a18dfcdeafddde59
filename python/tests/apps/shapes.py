"""The test app: one path per kind of result (no handle_batch: batches go through handle)."""

import os
import time

from fiddler_worker import HTTPError

calls = 0


def _gate(name):
    """Wait (bounded) for the file `name` in GATE_DIR, which the test creates."""
    path = os.path.join(os.environ["GATE_DIR"], name)
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError("gate %s never opened" % name)
        time.sleep(0.01)


def _touch(name):
    with open(os.path.join(os.environ["GATE_DIR"], name), "w"):
        pass


def handle(request):
    global calls
    calls += 1
    p = request.path
    if p == "/dict":
        return {"a": 1}
    if p == "/list":
        return [1, "two", None]
    if p == "/str":
        return "h\u00e9llo"
    if p == "/bytes":
        return b"\x00\x01\xff"
    if p == "/bytearray":
        return bytearray(b"ba")
    if p == "/none":
        return None
    if p == "/status":
        return 201, {"created": True}
    if p == "/status-headers-dict":
        return 202, {"X-Thing": "1", "content-type": "text/csv"}, "a,b\n"
    if p == "/status-headers-list":
        return 200, [("X-A", "1"), ("X-A", "2")], b"raw"
    if p == "/status-none":
        return 404, None
    if p == "/status-204-body":
        return 204, "ignored"
    if p == "/framing-headers":
        return 200, {"Content-Length": "999", "Connection": "close"}, "abc"
    if p == "/raise":
        raise ValueError("boom " + "x" * 300)
    if p == "/raise-multiline":
        raise RuntimeError("line one\nline two")
    if p == "/raise-http":
        raise HTTPError(409, {"error": "conflict"})
    if p == "/bad-shape":
        return 42
    if p == "/bad-tuple":
        return (200, {}, "x", "extra")
    if p == "/bad-status":
        return 99, "x"
    if p == "/bad-header":
        return 200, {"X-Evil": "a\r\nInjected: 1"}, "x"
    if p == "/numpy-like":
        class Arr:
            def tolist(self):
                return [1, 2]
        return {"values": Arr()}
    if p == "/json":
        return {"got": request.json()}
    if p == "/calls":
        return {"calls": calls}
    if p == "/pid":
        return {"pid": os.getpid()}
    if p == "/echo":
        return {
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path,
            "query": request.query,
            "query_params": request.query_params,
            "headers": request.headers.raw,
            "content_type": request.headers.get("CONTENT-TYPE"),
            "body": request.body.decode("latin-1"),
            "body_len": len(request.body),
            "version": request.version,
        }
    if p == "/gated":
        _touch("started")
        _gate("go")
        return "finished"
    if p == "/stuck":
        _touch("started")
        time.sleep(60)
        return "too late"
    if p.startswith("/stream"):
        return _stream(p, request)
    return 404, "no such test path"


def _stream(p, request):
    if p == "/stream":
        n = int(request.query_params.get("n", ["3"])[0])
        return ("line %d\n" % i for i in range(n))
    if p == "/stream-gated":
        def gen():
            yield "first\n"
            _gate("go")
            yield "second\n"
        return gen()
    if p == "/stream-cancel":
        def gen():
            try:
                yield "first\n"
                _gate("go")
                for i in range(1000):
                    yield "more %d\n" % i
                    time.sleep(0.01)
            finally:
                _touch("closed")
        return gen()
    if p == "/stream-sse":
        return 200, {"Content-Type": "text/event-stream"}, ("data: %d\n\n" % i for i in range(2))
    if p == "/stream-status":
        return 206, [("X-Kind", "partial")], iter([b"ab", b"", b"cd"])
    if p == "/stream-dicts":
        return iter([{"i": 0}, {"i": 1}])
    if p == "/stream-empty":
        return iter([])
    if p == "/stream-fail-first":
        def gen():
            raise KeyError("no such model")
            yield "never"
        return gen()
    if p == "/stream-fail-mid":
        def gen():
            yield "a\n"
            raise RuntimeError("broke mid-stream")
        return gen()
    return 404, "no such stream"
