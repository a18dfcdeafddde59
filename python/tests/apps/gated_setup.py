"""setup() signals that it started, then waits for the test to open the "go" gate."""

import os
import time

ready = False


def setup():
    global ready
    gate_dir = os.environ["GATE_DIR"]
    with open(os.path.join(gate_dir, "setup-started"), "w"):
        pass
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(gate_dir, "go")):
        if time.monotonic() > deadline:
            raise TimeoutError("the go gate never opened")
        time.sleep(0.01)
    ready = True


def handle(request):
    return {"ready": ready}
