"""The request an app's `handle` receives, its case-insensitive headers, and HTTPError."""

import json
from collections.abc import Mapping
from urllib.parse import parse_qs, unquote

__all__ = ["Headers", "Request", "HTTPError", "BadRequest"]


class Headers(Mapping):
    """Request headers: a read-only mapping whose keys are matched case-insensitively.

    `headers["content-type"]` and `headers["Content-Type"]` are the same; a header sent more than
    once reads as its values joined with ", " (`get_all` gives them one by one). Iterating gives
    the lower-case names; `raw` is the list of (name, value) pairs as they arrived.
    """

    __slots__ = ("raw", "_map")

    def __init__(self, pairs=(), _map=None):
        self.raw = list(pairs)
        if _map is None:
            _map = {}
            for name, value in self.raw:
                key = name.lower()
                _map[key] = _map[key] + ", " + value if key in _map else value
        self._map = _map

    def __getitem__(self, name):
        return self._map[name.lower()]

    def get(self, name, default=None):
        return self._map.get(name.lower(), default)

    def __contains__(self, name):
        return isinstance(name, str) and name.lower() in self._map

    def __iter__(self):
        return iter(self._map)

    def __len__(self):
        return len(self._map)

    def get_all(self, name):
        """Every value of header `name`, in arrival order (an empty list if absent)."""
        key = name.lower()
        return [value for n, value in self.raw if n.lower() == key]

    def __repr__(self):
        return "Headers(%r)" % (self.raw,)


class HTTPError(Exception):
    """Raise from `handle` to answer with `status` (and `body`, default the reason phrase).

    `body` takes the same shapes as a `handle` result (dict, list, str, bytes); `headers` a dict
    or a list of pairs. Unlike any other exception, it is not logged as a failure.
    """

    def __init__(self, status, body=None, headers=None):
        super().__init__(status, body)
        self.status = status
        self.body = body
        self.headers = headers

    def __str__(self):
        return "%s %s" % (self.status, "" if self.body is None else self.body)


class BadRequest(HTTPError, ValueError):
    """A 400: what `Request.json()` raises for a body that is not JSON."""

    def __init__(self, message):
        HTTPError.__init__(self, 400, {"error": message})
        self.message = message


class Request:
    """One HTTP request, read whole before `handle` sees it.

    - `method`: "GET", "POST", ...
    - `path`: the path, percent-decoded ("/a b" for "/a%20b"); `raw_path` as sent.
    - `query`: the raw query string, without "?" ("" if none); `query_params` parses it into a
      dict of lists (`{"n": ["3"]}`), keeping blank values.
    - `headers`: a case-insensitive `Headers` mapping.
    - `body`: the body as bytes (b"" if none); `json()` parses it, `text()` decodes it.
    - `version`: "HTTP/1.1" or "HTTP/1.0" ("HTTP/1.1" for a request that came in a batch).
    """

    __slots__ = ("method", "raw_path", "query", "headers", "body", "version", "_path", "_params")

    def __init__(self, method, raw_path, query, headers, body, version="HTTP/1.1"):
        self.method = method
        self.raw_path = raw_path
        self.query = query
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body
        self.version = version
        self._path = None
        self._params = None

    @property
    def path(self):
        if self._path is None:
            self._path = unquote(self.raw_path) if "%" in self.raw_path else self.raw_path
        return self._path

    @property
    def query_params(self):
        if self._params is None:
            self._params = parse_qs(self.query, keep_blank_values=True)
        return self._params

    def json(self):
        """The body parsed as JSON; a body that is not JSON raises BadRequest (answered 400)."""
        if not self.body:
            raise BadRequest("empty body, expected JSON")
        try:
            return json.loads(self.body)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
            raise BadRequest("invalid JSON body: %s" % e) from None

    def text(self, encoding="utf-8", errors="replace"):
        """The body decoded as text (UTF-8 by default, undecodable bytes replaced)."""
        return self.body.decode(encoding, errors)

    def __repr__(self):
        target = self.raw_path + ("?" + self.query if self.query else "")
        return "<Request %s %s, %d body bytes>" % (self.method, target, len(self.body))
