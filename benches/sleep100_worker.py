"""The flood benchmark's warm-worker handler (benches/flood.sh HANDLER=worker): sleeps 100 ms and
answers, like bench_server's `sleep100` builtin, so a crab endpoint has a capacity of 10 req/s.

    PYTHONPATH=python python3 -m fiddler_worker benches/sleep100_worker.py --socket /tmp/s.sock
"""

import time


def handle(request):
    time.sleep(0.1)
    return "slept 100 ms\n"
