"""The smallest fiddler_worker app (the benchmarks' baseline).

    PYTHONPATH=python python3 -m fiddler_worker examples/hello/app.py --socket /tmp/hello.sock
    curl --unix-socket /tmp/hello.sock http://worker/
"""


def handle(request):
    return {"hello": "world"}
