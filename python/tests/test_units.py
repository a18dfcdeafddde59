"""The pure parts, in process: headers, result shapes, error reasons, the batch codec, environ."""

import socket
import unittest

from fiddler_worker import BadRequest, Headers, HTTPError, Request
from fiddler_worker import batch
from fiddler_worker.http import Conn, HttpError, read_request
from fiddler_worker.response import ResultError, error_reason, from_exception, normalize
from fiddler_worker.wsgi import environ_for


class HeadersTest(unittest.TestCase):
    def test_case_insensitive_with_repeats_joined(self):
        h = Headers([("Content-Type", "a/b"), ("X-A", "1"), ("x-a", "2")])
        self.assertEqual((h["content-type"], h.get("CONTENT-TYPE")), ("a/b", "a/b"))
        self.assertEqual((h["X-A"], h.get_all("x-A")), ("1, 2", ["1", "2"]))
        self.assertIn("x-a", h)
        self.assertNotIn("missing", h)
        self.assertEqual((len(h), sorted(h)), (2, ["content-type", "x-a"]))
        self.assertIsNone(h.get("missing"))
        with self.assertRaises(KeyError):
            h["missing"]


class RequestTest(unittest.TestCase):
    def test_fields(self):
        r = Request("GET", "/a%2Fb", "x=1&x=2&e=", [("A", "1")], b'{"k": 1}')
        self.assertEqual((r.path, r.raw_path), ("/a/b", "/a%2Fb"))
        self.assertEqual(r.query_params, {"x": ["1", "2"], "e": [""]})
        self.assertEqual((r.json(), r.text()), ({"k": 1}, '{"k": 1}'))
        with self.assertRaises(BadRequest):
            Request("POST", "/", "", [], b"\xff").json()
        with self.assertRaises(ValueError):  # BadRequest is a ValueError too
            Request("POST", "/", "", [], b"").json()


class NormalizeTest(unittest.TestCase):
    def check(self, result, status, body, content_type=None):
        r = normalize(result)
        self.assertEqual((r.status, r.body), (status, body))
        self.assertEqual(dict((k.lower(), v) for k, v in r.headers).get("content-type"), content_type)

    def test_shapes(self):
        self.check({"a": [1]}, 200, b'{"a":[1]}', "application/json")
        self.check([], 200, b"[]", "application/json")
        self.check("\u00e9", 200, "\u00e9".encode(), "text/plain; charset=utf-8")
        self.check(b"b", 200, b"b", "application/octet-stream")
        self.check(memoryview(b"m"), 200, b"m", "application/octet-stream")
        self.check(None, 204, b"")
        self.check((418, "tea"), 418, b"tea", "text/plain; charset=utf-8")
        self.check((200, {"Content-Type": "x/y"}, {"a": 1}), 200, b'{"a":1}', "x/y")
        self.check((304, {}, "dropped"), 304, b"")
        r = normalize(x for x in "ab")
        self.assertIsNotNone(r.stream)

    def test_rejected(self):
        for bad in (1.5, True, {1, 2}, (200,), ("200", "x"), (True, "x"), (600, "x"), (100, "x"),
                    (200, {"A": "x\ny"}, ""), (200, {"A:B": "x"}, ""), (200, [("A",)], ""),
                    (200, {"A": "\u20ac"}, ""), (200, (201, "x"))):
            with self.assertRaises(ResultError, msg=repr(bad)):
                normalize(bad)
        with self.assertRaises(ResultError):
            normalize(iter([]), allow_stream=False)


class ErrorReasonTest(unittest.TestCase):
    def test_one_line_at_most_200_characters(self):
        self.assertEqual(error_reason(ValueError("a\n  b\tc")), "ValueError: a b c")
        self.assertEqual(error_reason(KeyError()), "KeyError")
        self.assertEqual(len(error_reason(RuntimeError("x" * 500))), 200)

    def test_http_error(self):
        r = from_exception(HTTPError(404))
        self.assertEqual((r.status, r.body), (404, b"Not Found"))
        r = from_exception(HTTPError(429, {"retry": 1}, {"Retry-After": "1"}))
        self.assertEqual((r.status, r.body, r.headers[-1]), (429, b'{"retry":1}', ("Retry-After", "1")))


class BatchCodecTest(unittest.TestCase):
    def test_round_trip(self):
        body = (b'{"method":"POST","path":"/p","query":"a=1","headers":[["X","1"]],"body_len":3}\n'
                b'a\nb{"method":"GET","path":"/q","body_len":0}\n')
        reqs = batch.decode(body, 2)
        self.assertEqual([(r.method, r.path, r.query, r.body) for r in reqs],
                         [("POST", "/p", "a=1", b"a\nb"), ("GET", "/q", "", b"")])
        self.assertEqual(reqs[0].headers["x"], "1")
        out = batch.encode([normalize({"k": 1}), normalize(None)])
        self.assertEqual(out, b'{"status":200,"headers":[["Content-Type","application/json"]],'
                              b'"body_len":7}\n{"k":1}{"status":204,"headers":[],"body_len":0}\n')

    def test_errors(self):
        for body, count in ((b'{"method":"GET","path":"/","body_len":-1}\n', 1),
                            (b'{"method":"GET","path":"/","body_len":true}\n', 1),
                            (b'{"method":"GET","path":"/","query":3,"body_len":0}\n', 1),
                            (b'[]\n', 1), (b"", 1)):
            with self.assertRaises(batch.BatchError, msg=body):
                batch.decode(body, count)


class ReadRequestTest(unittest.TestCase):
    def parse(self, data):
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        conn = Conn(a)
        conn.buf += data
        return read_request(conn)

    def test_partial_and_whole(self):
        self.assertIsNone(self.parse(b"GET / HTTP/1.1\r\nHost: x\r\n"))
        req, keep = self.parse(b"\r\nGET http://h:1/p?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual((req.method, req.raw_path, req.query, keep), ("GET", "/p", "q=1", True))
        req, keep = self.parse(b"POST /u HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nhi")
        self.assertEqual(req.body, b"hi")

    def test_refused(self):
        for data, status in ((b"GET / HTTP/1.1 extra\r\n\r\n", 400),
                             (b"GET / HTTP/1.1\r\n folded\r\n\r\n", 400),
                             (b"GET / HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", 400),
                             (b"GET / HTTP/1.1\r\nExpect: magic\r\nContent-Length: 1\r\n\r\nx", 417),
                             (b"GET nope HTTP/1.1\r\n\r\n", 400)):
            with self.assertRaises(HttpError, msg=data) as cm:
                self.parse(data)
            self.assertEqual(cm.exception.status, status, data)


class EnvironTest(unittest.TestCase):
    def test_environ(self):
        r = Request("GET", "/x%C3%A9", "", [("Host", "[::1]:9000"), ("X-Forwarded-Proto", "https"),
                                          ("Accept", "a"), ("accept", "b")], b"")
        env = environ_for(r)
        self.assertEqual(env["PATH_INFO"], "/x\u00c3\u00a9")  # bytes as latin-1, per PEP 3333
        self.assertEqual((env["SERVER_NAME"], env["SERVER_PORT"]), ("[::1]", "9000"))
        self.assertEqual((env["wsgi.url_scheme"], env["HTTP_ACCEPT"]), ("https", "a,b"))
        self.assertNotIn("CONTENT_LENGTH", env)
        self.assertNotIn("CONTENT_TYPE", env)
