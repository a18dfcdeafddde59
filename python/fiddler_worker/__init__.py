"""fiddler_worker: serve a Python app to fiddler_crab over HTTP/1.1 on a Unix socket.

Write a module with `handle(request)` (and optionally `setup()` and `handle_batch(requests)`)
and run `python3 -m fiddler_worker app.py`; see README.md for the API and the wire formats.

Layout:
- `cli`: the command line and the startup sequence (load, setup, bind, serve)
- `app`: finding the app (a file, a module, or a WSGI application)
- `request`: `Request`, its case-insensitive `Headers`, `HTTPError`
- `response`: what a `handle` result means (status, headers, body or stream)
- `http`: HTTP/1.1 framing over a blocking socket
- `server`: the guard (signals, parent death), the atomic bind, the serve loop
- `batch`: the batch wire format of `POST /.fiddler/batch`
- `wsgi`: serving a WSGI (PEP 3333) application
"""

__version__ = "0.1.0"

from .request import BadRequest, Headers, HTTPError, Request  # noqa: E402

__all__ = ["Request", "Headers", "HTTPError", "BadRequest", "__version__"]
