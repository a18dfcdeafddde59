"""Readiness after setup, startup failures, SIGTERM, and exit when the parent is gone."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap

from .support import (EXAMPLES, TIMEOUT, WorkerTest, app_path, can_connect, pid_alive,
                      wait_until, worker_env)


class Readiness(WorkerTest):
    def test_the_socket_appears_only_after_setup_returned(self):
        w = self.start(app_path("gated_setup.py"), wait=False)
        # A stale socket file from a dead worker is at the path before setup starts.
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(w.path)
        stale.close()
        wait_until(lambda: os.path.exists(w.gate_path("setup-started")), "setup() to start")
        self.assertFalse(os.path.exists(w.path), "the socket exists while setup() runs")
        self.assertFalse(can_connect(w.path))
        self.assertFalse(os.path.exists(w.path + ".tmp"))
        w.gate("go")
        w.wait_ready()
        status, _, body = w.request("GET", "/")
        self.assertEqual((status, body), (200, b'{"ready":true}'))

    def test_the_slow_setup_example_serves_its_pid_once_ready(self):
        w = self.start(os.path.join(EXAMPLES, "slow_setup", "app.py"), env={"SLOW_SETUP_S": "0.3"})
        status, _, body = w.request("GET", "/")
        self.assertEqual(status, 200)
        self.assertEqual(body, b'{"pid":%d}' % w.proc.pid)

    def test_the_socket_path_can_come_from_the_environment(self):
        w = self.start(os.path.join(EXAMPLES, "hello", "app.py"), socket_arg=False)
        self.assertEqual(w.request("GET", "/")[2], b'{"hello":"world"}')
        self.assertIn("ready", w.log())

    def test_a_failing_setup_exits_1_without_a_socket(self):
        w = self.start(app_path("failing_setup.py"), wait=False)
        self.assertEqual(w.wait_exit(), 1)
        self.assertFalse(os.path.exists(w.path))
        self.assertIn("RuntimeError: the model file is missing", w.log())

    def test_an_app_without_handle_exits_2(self):
        w = self.start(app_path("no_handle.py"), wait=False)
        self.assertEqual(w.wait_exit(), 2)
        self.assertIn("defines no handle(request)", w.log())

    def test_a_missing_app_or_socket_exits_2(self):
        w = self.start(app_path("does_not_exist.py"), wait=False)
        self.assertEqual(w.wait_exit(), 2)
        w2 = self.start("no.such.module", wait=False)
        self.assertEqual(w2.wait_exit(), 2)
        w3 = self.start(os.path.join(EXAMPLES, "hello", "app.py"), wait=False, socket_arg=False,
                        env={"FIDDLER_WORKER_SOCKET": ""})
        self.assertEqual(w3.wait_exit(), 2)
        self.assertIn("FIDDLER_WORKER_SOCKET", w3.log())

    def test_a_dotted_module_name_is_loaded(self):
        w = self.start("gated_setup", cwd=os.path.dirname(app_path("gated_setup.py")), wait=False)
        wait_until(lambda: os.path.exists(w.gate_path("setup-started")), "setup() to start")
        w.gate("go")
        w.wait_ready()
        self.assertEqual(w.request("GET", "/")[0], 200)


class Sigterm(WorkerTest):
    def test_sigterm_while_idle_exits_0_and_removes_the_socket(self):
        w = self.start(app_path("shapes.py"))
        conn = w.raw()  # an open idle connection does not hold the worker up
        w.proc.send_signal(signal.SIGTERM)
        self.assertEqual(w.wait_exit(), 0)
        self.assertFalse(os.path.exists(w.path))
        conn.close()

    def test_sigterm_lets_the_request_in_flight_finish(self):
        w = self.start(app_path("shapes.py"))
        conn = w.connection()
        self.addCleanup(conn.close)
        conn.request("GET", "/gated")
        wait_until(lambda: os.path.exists(w.gate_path("started")), "the request to start")
        w.proc.send_signal(signal.SIGTERM)
        w.gate("go")
        r = conn.getresponse()
        self.assertEqual((r.status, r.read()), (200, b"finished"))
        self.assertEqual(w.wait_exit(), 0)
        self.assertFalse(os.path.exists(w.path))

    def test_sigterm_ends_a_stuck_request_after_the_grace_second(self):
        w = self.start(app_path("shapes.py"))
        conn = w.connection()
        self.addCleanup(conn.close)
        conn.request("GET", "/stuck")
        wait_until(lambda: os.path.exists(w.gate_path("started")), "the request to start")
        w.proc.send_signal(signal.SIGTERM)
        self.assertEqual(w.wait_exit(timeout=10), 0)
        self.assertFalse(os.path.exists(w.path))
        with self.assertRaises((ConnectionError, OSError)):
            conn.getresponse()

    def test_sigterm_during_setup_exits_0(self):
        w = self.start(app_path("gated_setup.py"), wait=False)
        wait_until(lambda: os.path.exists(w.gate_path("setup-started")), "setup() to start")
        w.proc.send_signal(signal.SIGTERM)
        self.assertEqual(w.wait_exit(timeout=10), 0)
        self.assertFalse(os.path.exists(w.path))


# Started by the test as the worker's parent; prints the worker's pid, then exits.
INTERMEDIATE = textwrap.dedent("""
    import os, socket, subprocess, sys, time
    app, path, log, wait_ready, set_parent = sys.argv[1:6]
    env = dict(os.environ)
    if set_parent == "1":
        env["FIDDLER_WORKER_PARENT_PID"] = str(os.getpid())
    with open(log, "wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "fiddler_worker", app, "--socket", path],
                             env=env, stdout=out, stderr=out)
    if wait_ready == "1":
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
                break
            except OSError:
                time.sleep(0.02)
            finally:
                s.close()
    print(p.pid, flush=True)
""")


class ParentDeath(WorkerTest):
    def _orphan(self, wait_ready, set_parent):
        tmp = tempfile.mkdtemp(prefix="fw")
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "orphan.sock")
        log = os.path.join(tmp, "orphan.log")
        parent = subprocess.Popen(
            [sys.executable, "-c", INTERMEDIATE, os.path.join(EXAMPLES, "hello", "app.py"), path,
             log, wait_ready, set_parent],
            env=worker_env(), stdout=subprocess.PIPE)
        pid = int(parent.stdout.readline())
        parent.stdout.close()
        self.assertEqual(parent.wait(TIMEOUT), 0)

        def reap():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.addCleanup(reap)
        return pid, path, log

    def test_the_worker_exits_when_its_parent_exits(self):
        pid, path, log = self._orphan(wait_ready="1", set_parent="0")
        wait_until(lambda: not pid_alive(pid), "the orphaned worker to exit", timeout=10)
        self.assertFalse(os.path.exists(path), "the orphan left its socket file")
        with open(log) as f:
            self.assertIn("is gone", f.read())

    def test_the_worker_exits_when_fiddler_worker_parent_pid_is_gone(self):
        # The parent exits at once, possibly before the worker looked at its parent pid:
        # FIDDLER_WORKER_PARENT_PID still tells it.
        pid, path, _ = self._orphan(wait_ready="0", set_parent="1")
        wait_until(lambda: not pid_alive(pid), "the orphaned worker to exit", timeout=10)
        self.assertFalse(os.path.exists(path))
