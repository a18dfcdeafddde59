"""The worker for benches/stream.sh: a generator whose first chunk is the wall-clock time (ns)
at which it was produced, then one more line."""

import time


def handle(request):
    def chunks():
        yield "%d\n" % time.time_ns()
        yield "end\n"

    return 200, {"Content-Type": "text/plain"}, chunks()
