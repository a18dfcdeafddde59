"""A streamed answer: N lines, one chunk each, with an optional delay between them.

    GET /?n=5&delay=0.2        -> "line 0\n" ... "line 4\n", a chunk every 0.2 s
    GET /?n=3&format=sse       -> text/event-stream: "data: 0\n\n" ...
    GET /?n=3&format=ndjson    -> {"i":0}\n ... (application/x-ndjson)

    PYTHONPATH=python python3 -m fiddler_worker examples/stream/app.py --socket /tmp/stream.sock
    curl -N --unix-socket /tmp/stream.sock 'http://worker/?n=5&delay=0.5'
"""

import time


def _arg(request, name, default, kind):
    try:
        return kind(request.query_params.get(name, [default])[0])
    except ValueError:
        return None


def handle(request):
    n = _arg(request, "n", "10", int)
    delay = _arg(request, "delay", "0", float)
    fmt = request.query_params.get("format", ["text"])[0]
    if n is None or delay is None or n < 0 or delay < 0 or fmt not in ("text", "sse", "ndjson"):
        return 400, {"error": "expected n (int >= 0), delay (seconds >= 0), format (text|sse|ndjson)"}

    def lines():
        for i in range(n):
            if i and delay:
                time.sleep(delay)
            if fmt == "sse":
                yield "data: %d\n\n" % i
            elif fmt == "ndjson":
                yield {"i": i}
            else:
                yield "line %d\n" % i

    if fmt == "sse":
        return 200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}, lines()
    return lines()
