"""HTTP/1.1 framing: keep-alive, pipelining, HTTP/1.0, request bodies, malformed input."""

import json

from .support import WorkerTest, app_path, closed_by_peer, read_response


class Http(WorkerTest):
    def setUp(self):
        self.w = self.start(app_path("shapes.py"))

    def raw(self):
        s = self.w.raw()
        self.addCleanup(s.close)
        return s, s.makefile("rb")

    def test_many_requests_over_one_keep_alive_connection(self):
        conn = self.w.connection()
        self.addCleanup(conn.close)
        conn.request("GET", "/calls")
        first = json.loads(conn.getresponse().read())["calls"]
        sock = conn.sock
        for i in range(1, 301):
            conn.request("GET", "/calls")
            r = conn.getresponse()
            self.assertEqual(json.loads(r.read())["calls"], first + i)
            self.assertIs(conn.sock, sock, "the connection was not kept alive")
            self.assertIsNone(r.getheader("Connection"))

    def test_pipelined_requests_are_answered_in_order(self):
        s, f = self.raw()
        s.sendall(b"GET /str HTTP/1.1\r\nHost: w\r\n\r\n"
                  b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                  b"GET /list HTTP/1.1\r\n\r\n")
        self.assertEqual(read_response(f).body, "h\u00e9llo".encode())
        self.assertEqual(json.loads(read_response(f).body)["body"], "abc")
        self.assertEqual(read_response(f).body, b'[1,"two",null]')

    def test_a_second_connection_is_served_while_the_first_stays_open(self):
        a, fa = self.raw()
        b, fb = self.raw()
        b.sendall(b"GET /dict HTTP/1.1\r\n\r\n")
        self.assertEqual(read_response(fb).status, 200)
        a.sendall(b"GET /dict HTTP/1.1\r\n\r\n")
        self.assertEqual(read_response(fa).status, 200)

    def test_connection_close_closes_after_the_response(self):
        s, f = self.raw()
        s.sendall(b"GET /dict HTTP/1.1\r\nConnection: close\r\n\r\n")
        r = read_response(f)
        self.assertEqual((r.status, r.header("connection")), (200, "close"))
        self.assertTrue(closed_by_peer(s))

    def test_http10_closes_unless_keep_alive_is_asked_for(self):
        s, f = self.raw()
        s.sendall(b"GET /dict HTTP/1.0\r\n\r\n")
        r = read_response(f)
        self.assertEqual((r.status, r.header("connection"), r.body), (200, "close", b'{"a":1}'))
        self.assertTrue(closed_by_peer(s))

        s, f = self.raw()
        for _ in range(2):
            s.sendall(b"GET /dict HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            r = read_response(f)
            self.assertEqual((r.status, r.header("connection")), (200, "keep-alive"))

    def test_a_content_length_body_split_across_sends(self):
        s, f = self.raw()
        body = bytes(range(256)) * 4096  # 1 MiB
        s.sendall(b"POST /echo?x=1 HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 100000):
            s.sendall(body[i:i + 100000])
        echo = json.loads(read_response(f).body)
        self.assertEqual(echo["body_len"], len(body))
        self.assertEqual(echo["body"].encode("latin-1"), body)

    def test_a_chunked_request_body(self):
        s, f = self.raw()
        s.sendall(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        s.sendall(b"lo\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n")
        s.sendall(b"0\r\nX-Trailer: yes\r\n\r\nGET /dict HTTP/1.1\r\n\r\n")
        echo = json.loads(read_response(f).body)
        self.assertEqual(echo["body"], "hello 0123456789")
        self.assertEqual(read_response(f).body, b'{"a":1}')

    def test_expect_100_continue(self):
        s, f = self.raw()
        s.sendall(b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        self.assertEqual(f.readline(), b"HTTP/1.1 100 Continue\r\n")
        self.assertEqual(f.readline(), b"\r\n")
        s.sendall(b"hi")
        self.assertEqual(json.loads(read_response(f).body)["body"], "hi")

    def test_request_fields(self):
        status, _, body = self.w.request(
            "PUT", "/echo?a=1&a=2&b=&c=%20x", body=b"payload",
            headers={"X-One": "1", "Content-Type": "text/plain"})
        echo = json.loads(body)
        self.assertEqual(status, 200)
        self.assertEqual(echo["method"], "PUT")
        self.assertEqual(echo["query"], "a=1&a=2&b=&c=%20x")
        self.assertEqual(echo["query_params"], {"a": ["1", "2"], "b": [""], "c": [" x"]})
        self.assertEqual(echo["content_type"], "text/plain")
        self.assertIn(["X-One", "1"], echo["headers"])
        self.assertEqual((echo["body"], echo["version"]), ("payload", "HTTP/1.1"))
        echo = json.loads(self.w.request("GET", "/%65ch%6F")[2])
        self.assertEqual((echo["path"], echo["raw_path"]), ("/echo", "/%65ch%6F"))

    def test_head_gets_the_length_but_no_body(self):
        s, f = self.raw()
        s.sendall(b"HEAD /dict HTTP/1.1\r\n\r\nGET /dict HTTP/1.1\r\n\r\n")
        r = read_response(f, method="HEAD")
        self.assertEqual((r.status, r.header("content-length")), (200, "7"))
        self.assertEqual(read_response(f).body, b'{"a":1}')

    def test_health_is_answered_by_the_helper(self):
        before = json.loads(self.w.request("GET", "/calls")[2])["calls"]
        status, headers, body = self.w.request("GET", "/.fiddler/health")
        self.assertEqual((status, body), (200, b"ok"))
        self.assertEqual(self.w.request("POST", "/.fiddler/health")[0], 405)
        self.assertEqual(self.w.request("GET", "/.fiddler/other")[0], 404)
        self.assertEqual(self.w.request("GET", "/.fiddler/batch")[0], 405)
        self.assertEqual(json.loads(self.w.request("GET", "/calls")[2])["calls"], before + 1)

    def assert_refused(self, data, status):
        s, f = self.raw()
        s.sendall(data)
        r = read_response(f)
        self.assertEqual(r.status, status, r.body)
        self.assertEqual(r.header("connection"), "close")
        self.assertTrue(closed_by_peer(s))
        self.assertEqual(self.w.request("GET", "/dict")[0], 200)  # and the worker lives on

    def test_malformed_requests_get_400_and_a_closed_connection(self):
        self.assert_refused(b"GARBAGE\r\n\r\n", 400)
        self.assert_refused(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400)
        self.assert_refused(b"GET / HTTP/1.1\r\nBad : space\r\n\r\n", 400)
        self.assert_refused(b"GET / HTTP/1.1\r\nX: a\nY: b\r\n\r\n", 400)
        self.assert_refused(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400)
        self.assert_refused(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400)
        self.assert_refused(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400)
        self.assert_refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400)
        self.assert_refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501)
        self.assert_refused(b"GET / HTTP/2.0\r\n\r\n", 505)

    def test_limits(self):
        self.assert_refused(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431)
        self.assert_refused(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (2 << 30), 413)
