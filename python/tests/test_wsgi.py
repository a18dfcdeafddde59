"""--wsgi MODULE:APP serves a WSGI (PEP 3333) application unchanged."""

import json
import os

from .support import WorkerTest, app_path, read_response


class Wsgi(WorkerTest):
    def setUp(self):
        # The module form, found from the working directory as gunicorn would.
        self.w = self.start("--wsgi", "wsgi_app:application", cwd=os.path.dirname(app_path("wsgi_app.py")))

    def test_the_environ(self):
        status, headers, body = self.w.request(
            "POST", "/a%20b/c?x=1&y=%20", body=b"payload",
            headers={"Content-Type": "text/plain", "X-Custom": "yes", "Host": "example.org:8443"})
        env = json.loads(body)
        self.assertEqual(status, 200)
        self.assertEqual(env["REQUEST_METHOD"], "POST")
        self.assertEqual(env["SCRIPT_NAME"], "")
        self.assertEqual(env["PATH_INFO"], "/a b/c")
        self.assertEqual(env["QUERY_STRING"], "x=1&y=%20")
        self.assertEqual((env["CONTENT_TYPE"], env["CONTENT_LENGTH"]), ("text/plain", "7"))
        self.assertEqual((env["SERVER_NAME"], env["SERVER_PORT"]), ("example.org", "8443"))
        self.assertEqual((env["HTTP_X_CUSTOM"], env["HTTP_HOST"]), ("yes", "example.org:8443"))
        self.assertEqual((env["SERVER_PROTOCOL"], env["wsgi.url_scheme"]), ("HTTP/1.1", "http"))
        self.assertEqual(env["wsgi.version"], [1, 0])
        self.assertEqual(env["input"], "payload")
        self.assertTrue(env["errors_writable"])
        self.assertEqual(env["wsgi.input_terminated"], True)

    def test_a_chunked_body_reaches_wsgi_input_with_its_length(self):
        s = self.w.raw()
        self.addCleanup(s.close)
        f = s.makefile("rb")
        s.sendall(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        env = json.loads(read_response(f).body)
        self.assertEqual((env["input"], env["CONTENT_LENGTH"]), ("abc", "3"))

    def test_the_iterable_is_closed(self):
        before = json.loads(self.w.request("GET", "/closed")[2])["closed"]
        self.assertEqual(self.w.request("GET", "/iterable")[2], b"abcdef")
        self.w.request("GET", "/")
        after = json.loads(self.w.request("GET", "/closed")[2])["closed"]
        self.assertEqual(after, before + 2)

    def test_write_and_status(self):
        self.assertEqual(self.w.request("GET", "/write")[2], b"written returned")
        status, headers, body = self.w.request("GET", "/teapot")
        self.assertEqual((status, headers["X-Tea"], body), (418, "yes", b"short and stout"))

    def test_a_generator_without_content_length_streams(self):
        s = self.w.raw()
        self.addCleanup(s.close)
        f = s.makefile("rb")
        s.sendall(b"GET /stream HTTP/1.1\r\n\r\n")
        r = read_response(f)
        self.assertEqual((r.header("transfer-encoding"), r.chunks), ("chunked", [b"one\n", b"two\n"]))

    def test_an_exception_is_a_500(self):
        status, _, body = self.w.request("GET", "/raise")
        self.assertEqual((status, body), (500, b"ZeroDivisionError: division by zero in the app"))
        self.assertEqual(self.w.request("GET", "/closed")[0], 200)


class WsgiFromAFile(WorkerTest):
    def test_a_file_path_and_the_default_attribute(self):
        w = self.start("--wsgi", app_path("wsgi_app.py"))
        self.assertEqual(w.request("GET", "/teapot")[0], 418)

    def test_a_batch_goes_through_the_wsgi_app(self):
        from .support import decode_batch, post_batch
        w = self.start("--wsgi", app_path("wsgi_app.py") + ":application")
        status, _, body = post_batch(w, [("GET", "/teapot", "", [], b""), ("PUT", "/x", "a=1", [], b"in")])
        items = decode_batch(body)
        self.assertEqual([i[0] for i in items], [418, 200])
        env = json.loads(items[1][2])
        self.assertEqual((env["REQUEST_METHOD"], env["QUERY_STRING"], env["input"]), ("PUT", "a=1", "in"))

    def test_a_missing_attribute_exits_2(self):
        w = self.start("--wsgi", app_path("wsgi_app.py") + ":nope", wait=False)
        self.assertEqual(w.wait_exit(), 2)
