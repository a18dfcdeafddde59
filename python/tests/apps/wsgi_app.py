"""A tiny WSGI application written to PEP 3333 by hand, as Flask would present itself."""

import json

closed = 0


class Body:
    """An iterable with close(), which the server must call."""

    def __init__(self, chunks):
        self.chunks = chunks

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        global closed
        closed += 1


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/closed":
        body = json.dumps({"closed": closed}).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/iterable":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
        return Body([b"abc", b"def"])
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"returned"]
    if path == "/stream":
        def gen():
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"one\n"
            yield b""
            yield b"two\n"
        return gen()
    if path == "/teapot":
        start_response("418 I'm a teapot", [("Content-Type", "text/plain"), ("X-Tea", "yes")])
        return [b"short and stout"]
    if path == "/raise":
        raise ZeroDivisionError("division by zero in the app")
    keys = ["REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE",
            "CONTENT_LENGTH", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "HTTP_X_CUSTOM",
            "HTTP_HOST", "wsgi.url_scheme", "wsgi.version", "wsgi.multithread",
            "wsgi.input_terminated"]
    out = {k: environ.get(k) for k in keys}
    out["input"] = environ["wsgi.input"].read().decode("latin-1")
    out["errors_writable"] = hasattr(environ["wsgi.errors"], "write")
    body = json.dumps(out).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return Body([body])
