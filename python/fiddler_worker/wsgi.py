"""Serve a WSGI application (PEP 3333), such as a Flask app, as a fiddler_worker handle.

The response is collected whole (and sent with Content-Length) when the app declares a
Content-Length or returns a list or tuple; any other iterable is streamed, chunk by chunk, the
way gunicorn streams it.
"""

import io
import sys
from urllib.parse import unquote_to_bytes

from .response import ResultError

__all__ = ["WSGIHandler", "environ_for"]


def environ_for(request):
    """The WSGI environ for a Request."""
    headers = request.headers
    host = headers.get("host", "")
    scheme = headers.get("x-forwarded-proto", "http").split(",")[0].strip().lower()
    if scheme not in ("http", "https"):
        scheme = "http"
    name, port = _split_host(host, "443" if scheme == "https" else "80")
    raw_path = request.raw_path
    path_info = unquote_to_bytes(raw_path).decode("latin-1") if "%" in raw_path else raw_path
    environ = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path_info,
        "QUERY_STRING": request.query,
        "SERVER_NAME": name,
        "SERVER_PORT": port,
        "SERVER_PROTOCOL": request.version,
        "REMOTE_ADDR": "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": io.BytesIO(request.body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    content_type = headers.get("content-type")
    if content_type is not None:
        environ["CONTENT_TYPE"] = content_type
    if request.body or "content-length" in headers or "transfer-encoding" in headers:
        # A chunked body was decoded already: its length is known now.
        environ["CONTENT_LENGTH"] = str(len(request.body))
    for header, value in headers.raw:
        key = header.upper().replace("-", "_")
        if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
            continue
        key = "HTTP_" + key
        old = environ.get(key)
        environ[key] = value if old is None else old + "," + value
    return environ


def _split_host(host, default_port):
    if not host:
        return "localhost", default_port
    if host.startswith("["):  # [::1]:8080
        end = host.find("]")
        if end > 0:
            rest = host[end + 1:]
            return host[:end + 1], rest[1:] if rest.startswith(":") and rest[1:] else default_port
        return host, default_port
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return name, port
    return host, default_port


class _Call:
    """The state of one WSGI call: what start_response was given, what write() wrote."""

    __slots__ = ("status", "headers", "written", "streaming")

    def __init__(self):
        self.status = None
        self.headers = None
        self.written = []
        self.streaming = False

    def start_response(self, status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if self.streaming:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        if not isinstance(status, str) or len(status) < 3 or not status[:3].isdigit():
            raise ResultError("WSGI status must be a string like '200 OK', got %r" % (status,))
        self.status = int(status[:3])
        self.headers = list(headers)
        return self.written.append


class WSGIHandler:
    """A `handle(request)` that calls a WSGI application."""

    def __init__(self, application):
        self.application = application

    def __call__(self, request):
        call = _Call()
        result = self.application(environ_for(request), call.start_response)
        stream = False
        try:
            if isinstance(result, (list, tuple)):
                return self._whole(call, list(result))
            it = iter(result)
            first = b""
            for chunk in it:
                if chunk:
                    first = chunk
                    break
            else:
                return self._whole(call, [])
            if self._declared_length(call):
                rest = list(it)
                rest.insert(0, first)
                return self._whole(call, rest)
            if call.status is None:
                raise ResultError("the WSGI app yielded a body before calling start_response")
            stream = True
            call.streaming = True
            return (call.status, call.headers, _stream(call, first, it, result))
        finally:
            if not stream:
                close = getattr(result, "close", None)
                if close is not None:
                    close()

    @staticmethod
    def _declared_length(call):
        if call.headers is None:
            return False
        return any(name.lower() == "content-length" for name, _ in call.headers)

    @staticmethod
    def _whole(call, chunks):
        if call.status is None:
            raise ResultError("the WSGI app returned without calling start_response")
        for chunk in chunks:
            if not isinstance(chunk, bytes):
                raise ResultError("a WSGI app must yield bytes, got %s" % type(chunk).__name__)
        return (call.status, call.headers, b"".join(call.written) + b"".join(chunks))


def _stream(call, first, it, result):
    try:
        written = call.written
        if written:
            yield b"".join(written)
            written.clear()
        yield first
        for chunk in it:
            if written:
                yield b"".join(written)
                written.clear()
            yield chunk
        if written:
            yield b"".join(written)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
