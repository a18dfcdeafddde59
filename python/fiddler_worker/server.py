"""The worker's life: the guard (signals, parent death), the atomic bind, and the serve loop.

The loop is single-threaded and blocking: it polls the listener and the open connections,
and serves one request at a time to completion. Any number of connections may stay open (the
server keeps one, but a second one never waits behind an idle first one).
"""

import os
import select
import signal
import socket
import stat
import sys
import threading
import time
import traceback

from . import batch
from .http import Closed, Conn, HttpError, read_request, send_error, send_response, send_stream
from .response import (TEXT_HEADERS, Response, ResultError, encode_item, error_reason,
                       from_exception, normalize, stream_content_type)

__all__ = ["Guard", "Stop", "bind", "serve", "log"]

HEALTH_PATH = "/.fiddler/health"
PARENT_POLL_S = 0.5
STOP_GRACE_S = 1.0
MAX_CONNECTIONS = 64
_HEALTH = Response(200, TEXT_HEADERS, b"ok")

_worker_id = os.environ.get("FIDDLER_WORKER_ID", "?")


def log(message):
    sys.stderr.write("fiddler_worker[%s]: %s\n" % (_worker_id, message))
    sys.stderr.flush()


class Stop(BaseException):
    """Raised in the main thread to stop the worker cleanly (a BaseException, so an app's
    `except Exception` does not swallow it)."""


class Guard:
    """Watches, from a daemon thread, for SIGTERM/SIGINT and for the server going away.

    - SIGTERM or SIGINT while idle: the main thread stops at once (Stop is raised where it
      waits). While a request is in flight it finishes it first; after STOP_GRACE_S the guard
      thread ends the process anyway (the in-flight code may be stuck in C, where Python
      signal handlers cannot run: the guard learns of the signal through a wakeup fd).
    - The parent gone (os.getppid() changed, or FIDDLER_WORKER_PARENT_PID no longer exists),
      checked every PARENT_POLL_S: the socket file is removed and the process exits, status 0.
    """

    def __init__(self):
        self.ppid = os.getppid()
        self.parent_pid = None
        raw = os.environ.get("FIDDLER_WORKER_PARENT_PID", "").strip()
        if raw:
            if raw.isdigit() and int(raw) > 0:
                self.parent_pid = int(raw)
            else:
                log("ignoring FIDDLER_WORKER_PARENT_PID=%r (not a pid)" % raw)
        self.busy = False
        self.stopping = False
        self.exiting = False
        self.socket_path = None
        self._socket_id = None
        self._cleanup_lock = threading.Lock()
        self._wakeup_r = None

    def install(self):
        """Install the signal handlers and start the guard thread (from the main thread)."""
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        self._wakeup_r = r
        self._wakeup_w = w  # kept referenced: the wakeup fd must stay open
        signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        threading.Thread(target=self._run, name="fiddler-guard", daemon=True).start()

    def _on_signal(self, signum, frame):
        self.stopping = True
        if not self.busy and not self.exiting:
            raise Stop()

    def parent_gone(self):
        """Why the parent counts as gone, or None."""
        ppid = os.getppid()
        if ppid != self.ppid:
            return "parent %d is gone (parent is now %d)" % (self.ppid, ppid)
        if self.parent_pid is not None:
            try:
                os.kill(self.parent_pid, 0)
            except ProcessLookupError:
                return "FIDDLER_WORKER_PARENT_PID %d is gone" % self.parent_pid
            except PermissionError:
                pass
        return None

    def _run(self):
        deadline = None
        wakeup = self._wakeup_r
        while True:
            timeout = PARENT_POLL_S
            if deadline is not None:
                timeout = max(0.0, min(timeout, deadline - time.monotonic()))
            ready, _, _ = select.select([wakeup], [], [], timeout)
            if ready:
                try:
                    signals = wakeup.recv(64)
                except (BlockingIOError, InterruptedError):
                    signals = b""
                if signal.SIGTERM in signals or signal.SIGINT in signals:
                    self.stopping = True
            if self.stopping and deadline is None:
                deadline = time.monotonic() + STOP_GRACE_S
            if deadline is not None and time.monotonic() >= deadline:
                self.exit_now("stopping: a request was still running %.1f s after the signal"
                              % STOP_GRACE_S)
            reason = self.parent_gone()
            if reason is not None:
                self.exit_now("exiting: " + reason)

    def exit_now(self, reason):
        """Remove the socket file and end the process at once, status 0 (any thread)."""
        log(reason)
        self.cleanup()
        try:
            sys.stdout.flush()
        except Exception:
            pass
        os._exit(0)

    def own_socket(self, path):
        """Remember the socket file this worker bound, to remove it (and only it) at exit."""
        st = os.stat(path)
        self.socket_path = path
        self._socket_id = (st.st_dev, st.st_ino)

    def cleanup(self):
        """Remove the socket file if it is still the one this worker bound (a replacement
        worker may already have bound a new one at the same path)."""
        with self._cleanup_lock:
            path, ident = self.socket_path, self._socket_id
            self.socket_path = None
            if path is None:
                return
            try:
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == ident:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                log("could not remove %s: %s" % (path, e))


def remove_stale(path):
    """Remove a leftover socket file at path; refuse to remove anything that is not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError("%s exists and is not a socket; refusing to replace it" % path)
    os.unlink(path)


def bind(path):
    """A listening Unix socket at path, bound at path.tmp and renamed into place, so that the
    path only ever names a socket that accepts."""
    tmp = path + ".tmp"
    remove_stale(tmp)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(tmp)
        listener.listen(64)
        os.rename(tmp, path)
    except BaseException:
        listener.close()
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return listener


def serve(listener, app, guard):
    """Serve until Stop. Never returns otherwise."""
    listener.setblocking(False)
    lfd = listener.fileno()
    poller = select.poll()
    poller.register(lfd, select.POLLIN)
    conns = {}
    order = []  # fds, oldest first, to drop the oldest when too many are open

    def close(fd):
        conn = conns.pop(fd, None)
        if conn is not None:
            poller.unregister(fd)
            order.remove(fd)
            conn.sock.close()

    while True:
        for fd, _ in poller.poll():
            if fd == lfd:
                while True:
                    try:
                        sock, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as e:  # EMFILE and the like: keep serving what is open
                        log("accept failed: %s" % e)
                        break
                    sock.setblocking(True)
                    if len(conns) >= MAX_CONNECTIONS:
                        close(order[0])
                    conns[sock.fileno()] = Conn(sock)
                    order.append(sock.fileno())
                    poller.register(sock.fileno(), select.POLLIN)
                continue
            conn = conns.get(fd)
            if conn is None:
                continue
            try:
                conn.fill()
                keep = _serve_buffered(conn, app, guard)
            except (Closed, OSError):
                keep = False
            except Exception:  # a bug in the helper: lose this connection, not the worker
                log("internal error, closing the connection:")
                traceback.print_exc()
                keep = False
            if not keep:
                close(fd)
            if guard.stopping:
                raise Stop()


def _serve_buffered(conn, app, guard):
    """Serve every whole request in conn's buffer; False when the connection must close."""
    while True:
        guard.busy = True
        try:
            try:
                parsed = read_request(conn)
            except HttpError as e:
                send_error(conn.sock, e.status, e.message)
                return False
            if parsed is None:
                return True
            request, keep_alive = parsed
            keep_alive = _respond(conn.sock, app, request, keep_alive)
        finally:
            guard.busy = False
        if not keep_alive:
            return False
        if guard.stopping:
            raise Stop()


def _internal(app, request):
    path = request.raw_path
    if path == HEALTH_PATH:
        if request.method in ("GET", "HEAD"):
            return _HEALTH
        return Response(405, (("Content-Type", "text/plain; charset=utf-8"), ("Allow", "GET, HEAD")),
                        b"method not allowed")
    if path == batch.BATCH_PATH:
        if request.method != "POST":
            return Response(405, (("Content-Type", "text/plain; charset=utf-8"), ("Allow", "POST")),
                            b"method not allowed")
        return batch.answer(app, request)
    return Response(404, TEXT_HEADERS, b"no such fiddler_worker path")


def _bad_result(e):
    log("handle: %s" % e)
    return Response(500, TEXT_HEADERS, error_reason(e).encode("utf-8"))


def _respond(sock, app, request, keep_alive):
    """Answer one request; returns whether the connection stays open."""
    if request.raw_path.startswith("/.fiddler/"):
        response = _internal(app, request)
    else:
        try:
            result = app.handle(request)
        except Exception as e:
            response = from_exception(e)
        else:
            try:
                response = normalize(result)
            except ResultError as e:
                response = _bad_result(e)
    head_only = request.method == "HEAD"
    http10 = request.version == "HTTP/1.0"
    if response.stream is None:
        send_response(sock, response, head_only, keep_alive, http10)
        return keep_alive
    return _respond_stream(sock, response, head_only, keep_alive, http10)


def _close_iterator(it):
    close = getattr(it, "close", None)
    if close is not None:
        try:
            close()
        except Exception as e:
            log("closing a stream raised %s" % error_reason(e))


def _respond_stream(sock, response, head_only, keep_alive, http10):
    it = response.stream
    # The first non-empty item is produced before anything is sent, so a generator that fails
    # at once (most validate their input there) still gets a proper 500.
    first_item = None
    first = b""
    try:
        while not first:
            first_item = next(it)
            first = encode_item(first_item)
    except StopIteration:
        _close_iterator(it)
        send_response(sock, Response(response.status, response.headers, b""), head_only,
                      keep_alive, http10)
        return keep_alive
    except ResultError as e:
        _close_iterator(it)
        send_response(sock, _bad_result(e), head_only, keep_alive, http10)
        return keep_alive
    except Exception as e:
        _close_iterator(it)
        send_response(sock, from_exception(e), head_only, keep_alive, http10)
        return keep_alive
    headers = response.headers
    if not any(name.lower() == "content-type" for name, _ in headers):
        headers = [("Content-Type", stream_content_type(first_item))] + list(headers)
    try:
        send_stream(sock, response.status, headers, first, it, encode_item, head_only,
                    keep_alive, http10)
    except (BrokenPipeError, ConnectionResetError):
        return False  # the server hung up: that is how it cancels a stream
    except Exception as e:
        log("the stream broke after its head was sent (the response is left unterminated): %s"
            % error_reason(e))
        if not isinstance(e, ResultError):
            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
            sys.stderr.flush()
        return False
    finally:
        _close_iterator(it)
    return keep_alive and not http10
