"""The command line: `python3 -m fiddler_worker APP` or `--wsgi MODULE:APP`.

Exit status: 0 after SIGTERM/SIGINT or when the server is gone; 1 when the app's own code
failed (an exception while importing it or in setup()); 2 for a usage error (bad arguments, no
socket path, the app or its handle not found, a socket path that cannot be bound).
"""

import argparse
import os
import sys
import traceback

from . import __version__
from .app import AppNotFound, load, load_wsgi
from .server import Guard, Stop, bind, log, remove_stale, serve

__all__ = ["main"]


def _parser():
    p = argparse.ArgumentParser(
        prog="python3 -m fiddler_worker",
        description="Serve a Python app to fiddler_crab over HTTP/1.1 on a Unix socket.")
    p.add_argument("app", nargs="?", metavar="FILE_OR_MODULE",
                   help="a .py file or a dotted module defining handle(request), and optionally "
                        "setup() and handle_batch(requests)")
    p.add_argument("--wsgi", metavar="MODULE:APP",
                   help="serve a WSGI application instead (e.g. a Flask app), like gunicorn")
    p.add_argument("--socket", metavar="PATH",
                   help="the Unix socket to serve on (default: $FIDDLER_WORKER_SOCKET)")
    p.add_argument("--version", action="version", version="fiddler_worker " + __version__)
    return p


def main(argv=None):
    guard = Guard()  # first: it records the parent pid before anything can take time
    guard.install()
    try:
        return _main(argv, guard)
    except Stop:
        return 0
    finally:
        guard.exiting = True
        guard.cleanup()


def _main(argv, guard):
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.app is None) == (args.wsgi is None):
        parser.error("give exactly one of FILE_OR_MODULE or --wsgi MODULE:APP")
    path = args.socket or os.environ.get("FIDDLER_WORKER_SOCKET")
    if not path:
        parser.error("no socket: set FIDDLER_WORKER_SOCKET or pass --socket PATH")
    path = os.path.abspath(path)  # setup() may chdir
    try:
        remove_stale(path)  # during setup the path must not name a socket that refuses
    except OSError as e:
        log(str(e))
        return 2

    try:
        app = load(args.app) if args.app is not None else load_wsgi(args.wsgi)
    except AppNotFound as e:
        log(str(e))
        return 2
    except Exception:
        log("importing the app failed:")
        traceback.print_exc()
        return 1
    if app.setup is not None:
        try:
            app.setup()
        except Exception:
            log("setup() failed:")
            traceback.print_exc()
            return 1

    try:
        listener = bind(path)
    except OSError as e:
        log("cannot listen on %s: %s" % (path, e))
        return 2
    guard.own_socket(path)
    log("ready: %s on %s (pid %d)" % (app.name, path, os.getpid()))
    serve(listener, app, guard)
    return 0  # not reached: serve only ends by Stop


if __name__ == "__main__":
    sys.exit(main())
