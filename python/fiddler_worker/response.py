"""What a `handle` result means: status, headers and a body (bytes) or a stream (an iterator).

The shapes, checked in this order:
- None -> 204, no body
- dict or list -> JSON (application/json)
- str -> text/plain; charset=utf-8
- bytes, bytearray, memoryview -> application/octet-stream
- an iterator or generator -> streamed, one chunk per item
- (status, body) or (status, headers, body), headers a dict or a list of (name, value) pairs
Anything else is the app's mistake: ResultError, answered 500 with its message.
"""

import json
import sys
import traceback
from collections.abc import Mapping

from .http import REASONS
from .request import HTTPError

__all__ = ["Response", "ResultError", "normalize", "from_exception", "error_reason", "encode_item"]

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
OCTET_TYPE = "application/octet-stream"
NDJSON_TYPE = "application/x-ndjson"

# Headers the helper owns: it frames every response itself, so an app's value would lie.
FRAMING_HEADERS = frozenset(("content-length", "transfer-encoding", "connection", "keep-alive"))

JSON_HEADERS = (("Content-Type", JSON_TYPE),)
TEXT_HEADERS = (("Content-Type", TEXT_TYPE),)
OCTET_HEADERS = (("Content-Type", OCTET_TYPE),)

REASON_LIMIT = 200


def _json_default(obj):
    # numpy arrays and scalars (and anything else with .tolist()) become plain lists and numbers.
    tolist = getattr(obj, "tolist", None)
    if tolist is not None:
        return tolist()
    raise TypeError("Object of type %s is not JSON serializable" % type(obj).__name__)


_encoder = json.JSONEncoder(separators=(",", ":"), default=_json_default)


def dump_json(obj):
    """obj as compact JSON bytes; numpy values are converted with .tolist()."""
    return _encoder.encode(obj).encode("ascii")


class ResultError(Exception):
    """A `handle` result the helper cannot answer with."""


class Response:
    """A normalized result: `status`, `headers` (tuple or list of (str, str)), and either
    `body` (bytes) or `stream` (an iterator). Bodiless statuses (204, 304) have body b""."""

    __slots__ = ("status", "headers", "body", "stream")

    def __init__(self, status, headers, body=b"", stream=None):
        self.status = status
        self.headers = headers
        self.body = body
        self.stream = stream


def _is_stream(obj):
    return hasattr(type(obj), "__next__")


def _plain_body(body):
    """(bytes, default headers) for a body that is not a tuple; None for an iterator."""
    if isinstance(body, (dict, list)):
        return dump_json(body), JSON_HEADERS
    if isinstance(body, str):
        return body.encode("utf-8"), TEXT_HEADERS
    if isinstance(body, bytes):
        return body, OCTET_HEADERS
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body), OCTET_HEADERS
    if body is None:
        return b"", ()
    if _is_stream(body):
        return None, ()
    hint = " (hint: .tolist())" if hasattr(body, "tolist") else ""
    if hasattr(type(body), "__await__"):
        hint = " (async handlers are not supported)"
    raise ResultError(
        "handle returned %s; expected dict, list, str, bytes, None, a generator or a "
        "(status, [headers,] body) tuple%s" % (type(body).__name__, hint))


def _headers(raw):
    """A validated list of (name, value) str pairs from a dict or a list of pairs."""
    if raw is None:
        return []
    items = raw.items() if isinstance(raw, Mapping) else raw
    out = []
    try:
        for name, value in items:
            name = name if isinstance(name, str) else str(name)
            value = value if isinstance(value, str) else str(value)
            if (not name or ":" in name or " " in name or "\r" in name or "\n" in name
                    or "\r" in value or "\n" in value):
                raise ResultError("invalid response header %r: %r" % (name, value))
            if name.lower() in FRAMING_HEADERS:
                continue
            name.encode("latin-1")
            value.encode("latin-1")
            out.append((name, value))
    except UnicodeEncodeError:
        raise ResultError("response header %r is not latin-1 text" % (name,)) from None
    except (TypeError, ValueError):
        raise ResultError("response headers must be a dict or a list of (name, value) pairs") from None
    return out


def _has_content_type(headers):
    for name, _ in headers:
        if len(name) == 12 and name.lower() == "content-type":
            return True
    return False


def normalize(result, allow_stream=True):
    """The Response for a `handle` result; raises ResultError for a shape it cannot answer."""
    # The common cases first, without building anything.
    if isinstance(result, dict):
        return Response(200, JSON_HEADERS, dump_json(result))
    if isinstance(result, tuple):
        if len(result) == 2:
            status, body = result
            headers = []
        elif len(result) == 3:
            status, raw_headers, body = result
            headers = _headers(raw_headers)
        else:
            raise ResultError("handle returned a tuple of %d items; expected (status, body) or "
                              "(status, headers, body)" % len(result))
        if not isinstance(status, int) or isinstance(status, bool):
            raise ResultError("status must be an int, got %s" % type(status).__name__)
        if not 200 <= status <= 599:
            raise ResultError("status %d is out of range (200-599)" % status)
        if isinstance(body, tuple):
            raise ResultError("the body of a (status, ...) tuple cannot be a tuple")
        data, defaults = _plain_body(body)
        if data is None:
            if not allow_stream:
                raise ResultError("handle returned a generator; a batch item cannot stream")
            return Response(status, headers, b"", body)
        if status == 204 or status == 304:
            return Response(status, headers, b"")
        if defaults and not _has_content_type(headers):
            headers = list(defaults) + headers
        return Response(status, headers, data)
    if result is None:
        return Response(204, (), b"")
    data, defaults = _plain_body(result)
    if data is None:
        if not allow_stream:
            raise ResultError("handle returned a generator; a batch item cannot stream")
        return Response(200, [], b"", result)
    return Response(200, defaults, data)


def error_reason(exc):
    """`ExceptionType: message` on one line, at most 200 characters."""
    name = type(exc).__name__
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not break the error path
        message = ""
    reason = "%s: %s" % (name, message) if message else name
    reason = " ".join(reason.split())
    if len(reason) > REASON_LIMIT:
        reason = reason[:REASON_LIMIT - 3] + "..."
    return reason


def from_exception(exc, where="handle"):
    """The Response for an exception raised by the app (HTTPError -> its status, else 500).

    A 500 prints the traceback to stderr."""
    if isinstance(exc, HTTPError):
        body = exc.body
        if body is None:
            body = REASONS.get(exc.status, "Error")
        try:
            return normalize((exc.status, exc.headers, body), allow_stream=False)
        except ResultError as e:
            return Response(500, TEXT_HEADERS, error_reason(e).encode("utf-8"))
    if exc.__traceback__ is not None:
        sys.stderr.write("fiddler_worker: %s raised:\n" % where)
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        sys.stderr.flush()
    return Response(500, TEXT_HEADERS, error_reason(exc).encode("utf-8"))


def encode_item(item):
    """One chunk of a stream as bytes: str -> UTF-8, bytes as is, dict or list -> a JSON line."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, (dict, list)):
        return dump_json(item) + b"\n"
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    raise ResultError("a stream yielded %s; expected str, bytes, dict or list" % type(item).__name__)


def stream_content_type(first):
    """The default Content-Type of a stream, from its first item."""
    if isinstance(first, (dict, list)):
        return NDJSON_TYPE
    if isinstance(first, str):
        return TEXT_TYPE
    return OCTET_TYPE
