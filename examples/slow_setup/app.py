"""A worker whose setup() takes a while, like loading a model: the socket appears only after it.

    SLOW_SETUP_S=3 PYTHONPATH=python python3 -m fiddler_worker examples/slow_setup/app.py --socket /tmp/slow.sock
"""

import os
import time


def setup():
    time.sleep(float(os.environ.get("SLOW_SETUP_S", "1.5")))


def handle(request):
    return {"pid": os.getpid()}
