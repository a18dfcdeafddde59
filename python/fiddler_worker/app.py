"""Finding the app: a .py file or a dotted module defining handle (and maybe setup,
handle_batch), or a WSGI application named as module:attribute."""

import importlib
import importlib.util
import os
import sys

from .wsgi import WSGIHandler

__all__ = ["App", "AppNotFound", "load", "load_wsgi"]


class AppNotFound(Exception):
    """The app cannot be found or lacks `handle`: a usage error (exit status 2).

    An exception raised by the app's own code while it is imported is not this one: it
    propagates, and the worker exits with status 1 as for a failed setup()."""


class App:
    """What the helper calls: `handle(request)`, and optionally `setup()` and
    `handle_batch(requests)` (None when the app does not define them)."""

    __slots__ = ("name", "handle", "setup", "handle_batch")

    def __init__(self, name, handle, setup=None, handle_batch=None):
        self.name = name
        self.handle = handle
        self.setup = setup
        self.handle_batch = handle_batch


def _is_file(target):
    return target.endswith(".py") or os.sep in target or os.path.isfile(target)


def _import_file(path):
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise AppNotFound("no such file: %s" % path)
    directory = os.path.dirname(path)
    # Like `python3 app.py`: the app's own folder comes first, so its sibling modules import.
    if directory not in sys.path:
        sys.path.insert(0, directory)
    stem = os.path.splitext(os.path.basename(path))[0]
    # Registered under its own name (as `import app` from its folder would), so pickle,
    # dataclasses and multiprocessing find it; a fallback name if that one is taken.
    name = stem if stem.isidentifier() and stem not in sys.modules else "fiddler_app"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise AppNotFound("cannot load %s as a Python module" % path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _import_module(name):
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        # Only the app's own module missing is a usage error; a dependency missing inside it
        # is the app failing.
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            raise AppNotFound("no module named %r" % name) from None
        raise


def _import(target):
    return _import_file(target) if _is_file(target) else _import_module(target)


def _optional(module, name):
    value = getattr(module, name, None)
    if value is not None and not callable(value):
        raise AppNotFound("%s in %s is not a function" % (name, module.__name__))
    return value


def load(target):
    """The App defined by a .py file path or a dotted module name."""
    module = _import(target)
    handle = getattr(module, "handle", None)
    if not callable(handle):
        raise AppNotFound("%s defines no handle(request) function" % target)
    return App(target, handle, _optional(module, "setup"), _optional(module, "handle_batch"))


def load_wsgi(spec):
    """The App serving the WSGI application named `module:attribute` (like gunicorn: the
    attribute defaults to `application`, may be dotted, and `create_app()` calls a factory).
    The module part may also be a .py file path."""
    if ":" in spec:
        module_part, _, attr = spec.rpartition(":")
    else:
        module_part, attr = spec, "application"
    if not module_part or not attr:
        raise AppNotFound("expected MODULE:ATTRIBUTE, got %r" % spec)
    module = _import(module_part)
    call = attr.endswith("()")
    if call:
        attr = attr[:-2]
    obj = module
    for part in attr.split("."):
        if not part.isidentifier():
            raise AppNotFound("invalid attribute %r in %r" % (attr, spec))
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppNotFound("%s has no attribute %r" % (module_part, attr)) from None
    if call:
        obj = obj()
    if not callable(obj):
        raise AppNotFound("%s is not a WSGI application (not callable)" % spec)
    return App(spec, WSGIHandler(obj))
