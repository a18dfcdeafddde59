"""A test app with handle_batch; the first request's X-Mode header picks what it does."""

from fiddler_worker import HTTPError

batch_calls = 0


def handle(request):
    if request.path == "/batch-calls":
        return {"batch_calls": batch_calls}
    return {"single": request.body.decode()}


def handle_batch(requests):
    global batch_calls
    batch_calls += 1
    mode = requests[0].headers.get("x-mode", "ok")
    n = len(requests)
    if mode == "raise":
        raise RuntimeError("batch failed")
    if mode == "short":
        return [{"i": i} for i in range(n - 1)]
    if mode == "not-a-list":
        return 42
    if mode == "generator":
        return ({"i": i} for i in range(n))
    if mode == "stream-item":
        return [iter(["x"]) if i == 1 else {"i": i} for i in range(n)]
    if mode == "exception-item":
        return [ValueError("bad row %d" % i) if i == 1 else {"i": i} for i in range(n)]
    if mode == "http-error-item":
        return [HTTPError(422, {"error": "row %d" % i}) if i == 1 else {"i": i} for i in range(n)]
    if mode == "shapes":
        return [{"i": 0}, "text", (201, {"X-Row": "2"}, b"raw"), None][:n]
    return [{"n": n, "i": i, "body": r.body.decode().upper(), "path": r.path, "query": r.query,
             "header": r.headers.get("x-row")} for i, r in enumerate(requests)]
