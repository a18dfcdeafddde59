"""The WSGI twin of examples/hello/app.py for benches/workers.sh: gunicorn serves it directly and
behind nginx. It answers what fiddler_worker answers for `{"hello": "world"}`: compact JSON,
encoded per request, as application/json.

    .venv/bin/gunicorn --chdir benches hello_wsgi:app
"""

import json

_encoder = json.JSONEncoder(separators=(",", ":"))


def app(environ, start_response):
    body = _encoder.encode({"hello": "world"}).encode("ascii")
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
