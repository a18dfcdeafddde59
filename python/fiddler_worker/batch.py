"""The batch wire format (POST /.fiddler/batch) and running a batch through the app.

A batch body is N items, each a JSON line then raw body bytes:

    {"method": "POST", "path": "/predict", "query": "", "headers": [["Content-Type", "..."]], "body_len": 5}\\n
    hello

The answer (200, Content-Type: application/x-fiddler-batch) is N items in the same order:

    {"status": 200, "headers": [["Content-Type", "application/json"]], "body_len": 2}\\n
    {}

The item headers never include Content-Length, Transfer-Encoding or Connection: body_len frames
each body, and the server frames what it sends on.
"""

import json
import sys

from .request import Headers, Request
from .response import (TEXT_HEADERS, Response, ResultError, dump_json, error_reason,
                       from_exception, normalize)

__all__ = ["BATCH_PATH", "BATCH_TYPE", "BatchError", "decode", "encode", "run", "answer"]

BATCH_PATH = "/.fiddler/batch"
BATCH_TYPE = "application/x-fiddler-batch"
COUNT_HEADER = "X-Fiddler-Batch"
# More items than this in one batch is a malformed batch, not a big one.
MAX_ITEMS = 1 << 20


class BatchError(Exception):
    """A malformed batch: the whole batch is answered 400 with this message."""


def decode(body, count):
    """The list of Requests in a batch body that must hold exactly `count` items."""
    requests = []
    pos = 0
    end = len(body)
    while pos < end:
        index = len(requests)
        if index >= count:
            raise BatchError("X-Fiddler-Batch says %d items but the body holds more" % count)
        nl = body.find(b"\n", pos)
        if nl < 0:
            raise BatchError("item %d: no newline after its JSON line" % index)
        try:
            meta = json.loads(body[pos:nl])
        except ValueError as e:
            raise BatchError("item %d: invalid JSON line: %s" % (index, e)) from None
        if not isinstance(meta, dict):
            raise BatchError("item %d: the JSON line is not an object" % index)
        method = meta.get("method")
        path = meta.get("path")
        query = meta.get("query", "")
        raw_headers = meta.get("headers", [])
        body_len = meta.get("body_len")
        if not isinstance(method, str) or not method:
            raise BatchError("item %d: method must be a non-empty string" % index)
        if not isinstance(path, str) or not path:
            raise BatchError("item %d: path must be a non-empty string" % index)
        if query is None:
            query = ""
        if not isinstance(query, str):
            raise BatchError("item %d: query must be a string" % index)
        if not isinstance(body_len, int) or isinstance(body_len, bool) or body_len < 0:
            raise BatchError("item %d: body_len must be an integer >= 0" % index)
        if not isinstance(raw_headers, list):
            raise BatchError("item %d: headers must be a list of [name, value] pairs" % index)
        pairs = []
        for pair in raw_headers:
            if (not isinstance(pair, list) or len(pair) != 2
                    or not isinstance(pair[0], str) or not isinstance(pair[1], str)):
                raise BatchError("item %d: headers must be a list of [name, value] pairs" % index)
            pairs.append((pair[0], pair[1]))
        start = nl + 1
        stop = start + body_len
        if stop > end:
            raise BatchError("item %d: body_len %d runs past the end of the batch" % (index, body_len))
        requests.append(Request(method, path, query, Headers(pairs), body[start:stop]))
        pos = stop
    if len(requests) != count:
        raise BatchError("X-Fiddler-Batch says %d items but the body holds %d" % (count, len(requests)))
    return requests


def encode(responses):
    """The batch answer body for a list of Responses (none of them streams)."""
    parts = []
    for r in responses:
        meta = {"status": r.status, "headers": [[n, v] for n, v in r.headers],
                "body_len": len(r.body)}
        parts.append(dump_json(meta))
        parts.append(b"\n")
        parts.append(r.body)
    return b"".join(parts)


def _error(message):
    return Response(500, TEXT_HEADERS, message.encode("utf-8"))


def _bad_result(e, where):
    sys.stderr.write("fiddler_worker: %s: %s\n" % (where, e))
    sys.stderr.flush()
    return _error(error_reason(e))


def _item(result, where):
    if isinstance(result, BaseException):
        # handle_batch may fail single items by putting an exception in their place.
        return from_exception(result, where)
    try:
        return normalize(result, allow_stream=False)
    except ResultError as e:
        close = getattr(result, "close", None)
        if close is not None and hasattr(type(result), "__next__"):
            close()
        return _bad_result(e, where)


def run(app, requests):
    """One Response per request, in order: handle_batch once if the app has it, else handle
    per request."""
    n = len(requests)
    if n == 0:
        return []
    if app.handle_batch is None:
        out = []
        for request in requests:
            try:
                result = app.handle(request)
            except Exception as e:
                out.append(from_exception(e, "handle"))
            else:
                out.append(_item(result, "handle"))
        return out
    try:
        results = app.handle_batch(requests)
        if not isinstance(results, (list, tuple)):
            if isinstance(results, (str, bytes, bytearray, dict)) or not hasattr(results, "__iter__"):
                raise ResultError("handle_batch returned %s; expected a list" % type(results).__name__)
            results = list(results)
    except ResultError as e:
        return [_bad_result(e, "handle_batch")] * n
    except Exception as e:
        return [from_exception(e, "handle_batch")] * n
    if len(results) != n:
        message = "handle_batch returned %d results for %d requests" % (len(results), n)
        sys.stderr.write("fiddler_worker: %s\n" % message)
        sys.stderr.flush()
        return [_error(message)] * n
    return [_item(result, "handle_batch") for result in results]


def answer(app, request):
    """The Response to a POST /.fiddler/batch request."""
    raw_count = request.headers.get(COUNT_HEADER)
    if raw_count is None:
        return Response(400, TEXT_HEADERS, b"missing X-Fiddler-Batch header")
    raw_count = raw_count.strip()
    if not (raw_count.isdigit() and raw_count.isascii()) or int(raw_count) > MAX_ITEMS:
        return Response(400, TEXT_HEADERS, b"invalid X-Fiddler-Batch header")
    try:
        requests = decode(request.body, int(raw_count))
    except BatchError as e:
        return Response(400, TEXT_HEADERS, str(e).encode("utf-8"))
    body = encode(run(app, requests))
    return Response(200, (("Content-Type", BATCH_TYPE),), body)
