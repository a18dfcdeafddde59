"""Streamed answers: a generator's items are sent as chunks while it still runs."""

import os

from .support import EXAMPLES, WorkerTest, app_path, closed_by_peer, read_chunk, read_head, read_response, wait_until


class Stream(WorkerTest):
    def setUp(self):
        self.w = self.start(app_path("shapes.py"))

    def raw(self):
        s = self.w.raw()
        self.addCleanup(s.close)
        return s, s.makefile("rb")

    def test_a_chunk_arrives_before_the_generator_finishes(self):
        s, f = self.raw()
        s.sendall(b"GET /stream-gated HTTP/1.1\r\n\r\n")
        status, headers = read_head(f)
        self.assertEqual((status, headers["transfer-encoding"]), (200, "chunked"))
        self.assertEqual(headers["content-type"], "text/plain; charset=utf-8")
        self.assertNotIn("content-length", headers)
        # The generator is now blocked on the gate: the first chunk must already be here.
        self.assertEqual(read_chunk(f), b"first\n")
        self.w.gate("go")
        self.assertEqual(read_chunk(f), b"second\n")
        self.assertEqual(read_chunk(f), b"")
        s.sendall(b"GET /dict HTTP/1.1\r\n\r\n")  # the connection is still usable
        self.assertEqual(read_response(f).body, b'{"a":1}')

    def test_one_chunk_per_item(self):
        s, f = self.raw()
        s.sendall(b"GET /stream?n=4 HTTP/1.1\r\n\r\n")
        r = read_response(f)
        self.assertEqual(r.chunks, [b"line 0\n", b"line 1\n", b"line 2\n", b"line 3\n"])

    def test_sse_with_status_and_headers(self):
        s, f = self.raw()
        s.sendall(b"GET /stream-sse HTTP/1.1\r\n\r\n")
        r = read_response(f)
        self.assertEqual((r.status, r.header("content-type")), (200, "text/event-stream"))
        self.assertEqual(r.chunks, [b"data: 0\n\n", b"data: 1\n\n"])
        s.sendall(b"GET /stream-status HTTP/1.1\r\n\r\n")
        r = read_response(f)
        self.assertEqual((r.status, r.header("x-kind"), r.chunks), (206, "partial", [b"ab", b"cd"]))
        self.assertEqual(r.header("content-type"), "application/octet-stream")

    def test_dict_items_are_json_lines(self):
        s, f = self.raw()
        s.sendall(b"GET /stream-dicts HTTP/1.1\r\n\r\n")
        r = read_response(f)
        self.assertEqual(r.header("content-type"), "application/x-ndjson")
        self.assertEqual(r.body, b'{"i":0}\n{"i":1}\n')

    def test_an_empty_generator_is_an_empty_body(self):
        status, headers, body = self.w.request("GET", "/stream-empty")
        self.assertEqual((status, headers["Content-Length"], body), (200, "0", b""))

    def test_a_generator_failing_before_its_first_item_is_a_500(self):
        status, _, body = self.w.request("GET", "/stream-fail-first")
        self.assertEqual((status, body), (500, b"KeyError: 'no such model'"))

    def test_a_generator_failing_mid_stream_leaves_the_response_unterminated(self):
        s, f = self.raw()
        s.sendall(b"GET /stream-fail-mid HTTP/1.1\r\n\r\n")
        r = read_response(f)
        self.assertEqual((r.status, r.chunks, r.complete), (200, [b"a\n"], False))
        self.assertTrue(closed_by_peer(s))
        self.assertEqual(self.w.request("GET", "/dict")[0], 200)
        self.assertIn("broke mid-stream", self.w.log())

    def test_closing_the_connection_cancels_the_generator(self):
        s, f = self.raw()
        s.sendall(b"GET /stream-cancel HTTP/1.1\r\n\r\n")
        read_head(f)
        self.assertEqual(read_chunk(f), b"first\n")
        f.close()
        s.close()
        self.w.gate("go")
        wait_until(lambda: os.path.exists(self.w.gate_path("closed")), "the generator to be closed")
        self.assertEqual(self.w.request("GET", "/dict")[0], 200)

    def test_http10_streams_until_close(self):
        s, f = self.raw()
        s.sendall(b"GET /stream?n=2 HTTP/1.0\r\n\r\n")
        r = read_response(f)
        self.assertIsNone(r.header("transfer-encoding"))
        self.assertEqual((r.header("connection"), r.body), ("close", b"line 0\nline 1\n"))

    def test_head_of_a_stream_has_no_body(self):
        s, f = self.raw()
        s.sendall(b"HEAD /stream HTTP/1.1\r\n\r\nGET /dict HTTP/1.1\r\n\r\n")
        r = read_response(f, method="HEAD")
        self.assertEqual((r.status, r.header("transfer-encoding")), (200, "chunked"))
        self.assertEqual(read_response(f).body, b'{"a":1}')


class StreamExample(WorkerTest):
    def test_the_stream_example(self):
        w = self.start(os.path.join(EXAMPLES, "stream", "app.py"))
        s = w.raw()
        self.addCleanup(s.close)
        f = s.makefile("rb")
        s.sendall(b"GET /?n=3&delay=0.01 HTTP/1.1\r\n\r\n")
        self.assertEqual(read_response(f).chunks, [b"line 0\n", b"line 1\n", b"line 2\n"])
        s.sendall(b"GET /?n=2&format=sse HTTP/1.1\r\n\r\n")
        r = read_response(f)
        self.assertEqual((r.header("content-type"), r.chunks), ("text/event-stream", [b"data: 0\n\n", b"data: 1\n\n"]))
        s.sendall(b"GET /?n=2&format=ndjson HTTP/1.1\r\n\r\n")
        self.assertEqual(read_response(f).body, b'{"i":0}\n{"i":1}\n')
        s.sendall(b"GET /?n=x HTTP/1.1\r\n\r\n")
        self.assertEqual(read_response(f).status, 400)
