"""POST /.fiddler/batch: the wire format, with and without handle_batch, and its failures."""

import json

from .support import WorkerTest, app_path, decode_batch, encode_batch, post_batch

TEXT = "text/plain; charset=utf-8"


def item(path, body=b"", query="", headers=(), method="POST"):
    return (method, path, query, list(headers), body)


class WithoutHandleBatch(WorkerTest):
    """The app has only handle: it is called once per item."""

    def setUp(self):
        self.w = self.start(app_path("shapes.py"))

    def test_each_item_goes_through_handle(self):
        status, headers, body = post_batch(self.w, [
            item("/dict"),
            item("/echo", b"x\ny\n", query="k=v", headers=[("X-Row", "1")]),
            item("/none"),
            item("/status-headers-list"),
        ])
        self.assertEqual((status, headers["Content-Type"]), (200, "application/x-fiddler-batch"))
        items = decode_batch(body)
        self.assertEqual(len(items), 4)
        self.assertEqual(items[0], (200, [("Content-Type", "application/json")], b'{"a":1}'))
        echo = json.loads(items[1][2])
        self.assertEqual((echo["path"], echo["query"], echo["body"]), ("/echo", "k=v", "x\ny\n"))
        self.assertEqual((echo["method"], echo["headers"]), ("POST", [["X-Row", "1"]]))
        self.assertEqual(items[2], (204, [], b""))
        self.assertEqual(items[3], (200, [("Content-Type", "application/octet-stream"),
                                          ("X-A", "1"), ("X-A", "2")], b"raw"))

    def test_an_exception_fails_only_its_own_item(self):
        items = decode_batch(post_batch(self.w, [item("/dict"), item("/raise"), item("/str")])[2])
        self.assertEqual([i[0] for i in items], [200, 500, 200])
        self.assertEqual(items[1][1], [("Content-Type", TEXT)])
        self.assertTrue(items[1][2].startswith(b"ValueError: boom"))

    def test_a_generator_is_not_allowed_in_a_batch(self):
        items = decode_batch(post_batch(self.w, [item("/stream"), item("/dict")])[2])
        self.assertEqual([i[0] for i in items], [500, 200])
        self.assertIn(b"cannot stream", items[0][2])

    def test_a_batch_of_one(self):
        items = decode_batch(post_batch(self.w, [item("/list")])[2])
        self.assertEqual(items, [(200, [("Content-Type", "application/json")], b'[1,"two",null]')])


class WithHandleBatch(WorkerTest):
    def setUp(self):
        self.w = self.start(app_path("batchapp.py"))

    def batch(self, mode, n=3):
        items = [item("/p%d" % i, b"body %d" % i, query="q=%d" % i,
                      headers=[("X-Mode", mode), ("X-Row", str(i))]) for i in range(n)]
        status, _, body = post_batch(self.w, items)
        self.assertEqual(status, 200)
        return decode_batch(body)

    def test_handle_batch_is_called_once_with_every_request(self):
        before = json.loads(self.w.request("GET", "/batch-calls")[2])["batch_calls"]
        items = self.batch("ok", n=5)
        self.assertEqual([json.loads(b) for _, _, b in items], [
            {"n": 5, "i": i, "body": "BODY %d" % i, "path": "/p%d" % i, "query": "q=%d" % i,
             "header": str(i)} for i in range(5)])
        after = json.loads(self.w.request("GET", "/batch-calls")[2])["batch_calls"]
        self.assertEqual(after, before + 1)

    def test_every_result_shape(self):
        items = self.batch("shapes", n=4)
        self.assertEqual(items, [
            (200, [("Content-Type", "application/json")], b'{"i":0}'),
            (200, [("Content-Type", TEXT)], b"text"),
            (201, [("Content-Type", "application/octet-stream"), ("X-Row", "2")], b"raw"),
            (204, [], b""),
        ])

    def test_an_exception_in_handle_batch_fails_every_item(self):
        items = self.batch("raise")
        self.assertEqual(items, [(500, [("Content-Type", TEXT)], b"RuntimeError: batch failed")] * 3)

    def test_a_wrong_count_fails_every_item(self):
        items = self.batch("short")
        self.assertEqual([(s, b) for s, _, b in items],
                         [(500, b"handle_batch returned 2 results for 3 requests")] * 3)

    def test_a_result_that_is_not_a_list_fails_every_item(self):
        items = self.batch("not-a-list")
        self.assertEqual([s for s, _, _ in items], [500] * 3)
        self.assertIn(b"handle_batch returned int", items[0][2])
        self.assertEqual([s for s, _, _ in self.batch("generator")], [200] * 3)

    def test_a_stream_fails_only_its_item(self):
        self.assertEqual([s for s, _, _ in self.batch("stream-item")], [200, 500, 200])

    def test_an_exception_as_a_result_fails_only_its_item(self):
        items = self.batch("exception-item")
        self.assertEqual([s for s, _, _ in items], [200, 500, 200])
        self.assertEqual(items[1][2], b"ValueError: bad row 1")
        items = self.batch("http-error-item")
        self.assertEqual((items[1][0], json.loads(items[1][2])), (422, {"error": "row 1"}))


class Malformed(WorkerTest):
    def setUp(self):
        self.w = self.start(app_path("batchapp.py"))

    def assert_400(self, body, headers, message):
        status, _, answer = self.w.request("POST", "/.fiddler/batch", body=body, headers=headers)
        self.assertEqual(status, 400)
        self.assertIn(message, answer.decode())

    def test_malformed_batches_are_400(self):
        good = encode_batch([item("/a", b"xy"), item("/b")])
        self.assert_400(good, {}, "missing X-Fiddler-Batch")
        self.assert_400(good, {"X-Fiddler-Batch": "two"}, "invalid X-Fiddler-Batch")
        self.assert_400(good, {"X-Fiddler-Batch": "3"}, "says 3 items but the body holds 2")
        self.assert_400(good, {"X-Fiddler-Batch": "1"}, "says 1 items but the body holds more")
        self.assert_400(good[:-1], {"X-Fiddler-Batch": "2"}, "item 1")
        self.assert_400(b'{"method":"GET","path":"/","body_len":5}\nab', {"X-Fiddler-Batch": "1"},
                        "runs past the end")
        self.assert_400(b"not json\n", {"X-Fiddler-Batch": "1"}, "invalid JSON line")
        self.assert_400(b'{"method":"GET","path":"/","body_len":0}', {"X-Fiddler-Batch": "1"},
                        "no newline")
        self.assert_400(b'{"path":"/","body_len":0}\n', {"X-Fiddler-Batch": "1"}, "method")
        self.assert_400(b'{"method":"GET","path":"/","headers":[["a"]],"body_len":0}\n',
                        {"X-Fiddler-Batch": "1"}, "headers")
        self.assertEqual(self.w.request("POST", "/x", body=b"still alive")[0], 200)

    def test_an_empty_batch(self):
        status, _, body = self.w.request("POST", "/.fiddler/batch", body=b"",
                                         headers={"X-Fiddler-Batch": "0"})
        self.assertEqual((status, body), (200, b""))
