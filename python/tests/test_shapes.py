"""Every shape a handle may return, and what an exception in handle answers."""

import json

from .support import WorkerTest, app_path


class Shapes(WorkerTest):
    @classmethod
    def setUpClass(cls):
        from .support import Worker
        cls.worker = Worker(app_path("shapes.py"))

    @classmethod
    def tearDownClass(cls):
        cls.worker.stop()

    def get(self, path, **kwargs):
        status, headers, body = self.worker.request(kwargs.pop("method", "GET"), path, **kwargs)
        return status, headers, body

    def test_dict_and_list_are_json(self):
        status, headers, body = self.get("/dict")
        self.assertEqual((status, headers["Content-Type"], body), (200, "application/json", b'{"a":1}'))
        self.assertEqual(headers["Content-Length"], "7")
        self.assertEqual(self.get("/list")[2], b'[1,"two",null]')

    def test_str_is_utf8_text(self):
        status, headers, body = self.get("/str")
        self.assertEqual(headers["Content-Type"], "text/plain; charset=utf-8")
        self.assertEqual(body.decode("utf-8"), "h\u00e9llo")

    def test_bytes_are_octet_stream(self):
        for path, expected in (("/bytes", b"\x00\x01\xff"), ("/bytearray", b"ba")):
            status, headers, body = self.get(path)
            self.assertEqual((headers["Content-Type"], body), ("application/octet-stream", expected))

    def test_none_is_204(self):
        status, headers, body = self.get("/none")
        self.assertEqual((status, body), (204, b""))
        self.assertIsNone(headers["Content-Length"])

    def test_status_and_body(self):
        status, headers, body = self.get("/status")
        self.assertEqual((status, json.loads(body)), (201, {"created": True}))
        status, headers, body = self.get("/status-none")
        self.assertEqual((status, body, headers["Content-Length"]), (404, b"", "0"))
        self.assertEqual(self.get("/status-204-body")[:3:2], (204, b""))

    def test_status_headers_body_with_a_dict_or_a_list(self):
        status, headers, body = self.get("/status-headers-dict")
        self.assertEqual((status, body), (202, b"a,b\n"))
        self.assertEqual((headers["X-Thing"], headers["Content-Type"]), ("1", "text/csv"))
        self.assertEqual(len(headers.get_all("Content-Type")), 1)
        status, headers, body = self.get("/status-headers-list")
        self.assertEqual(headers.get_all("X-A"), ["1", "2"])
        self.assertEqual(headers["Content-Type"], "application/octet-stream")

    def test_framing_headers_from_the_app_are_replaced(self):
        status, headers, body = self.get("/framing-headers")
        self.assertEqual((status, body, headers["Content-Length"]), (200, b"abc", "3"))
        self.assertIsNone(headers["Connection"])

    def test_numpy_values_become_lists(self):
        self.assertEqual(self.get("/numpy-like")[2], b'{"values":[1,2]}')

    def test_an_exception_is_a_500_with_a_one_line_reason_and_the_worker_lives_on(self):
        status, headers, body = self.get("/raise")
        self.assertEqual(status, 500)
        self.assertEqual(headers["Content-Type"], "text/plain; charset=utf-8")
        reason = body.decode()
        self.assertTrue(reason.startswith("ValueError: boom xxx"), reason)
        self.assertEqual(len(reason), 200)
        self.assertEqual(self.get("/raise-multiline")[2], b"RuntimeError: line one line two")
        self.assertEqual(self.get("/dict")[0], 200)
        self.assertIn("Traceback", self.worker.log())

    def test_http_error_answers_its_status(self):
        status, _, body = self.get("/raise-http")
        self.assertEqual((status, json.loads(body)), (409, {"error": "conflict"}))

    def test_json_helper(self):
        status, _, body = self.get("/json", method="POST", body=b'{"x": [1, 2]}')
        self.assertEqual((status, json.loads(body)), (200, {"got": {"x": [1, 2]}}))
        status, _, body = self.get("/json", method="POST", body=b"{not json")
        self.assertEqual(status, 400)
        self.assertIn("invalid JSON body", json.loads(body)["error"])
        self.assertEqual(self.get("/json", method="POST")[0], 400)

    def test_results_the_helper_cannot_answer_are_500(self):
        cases = {
            "/bad-shape": "handle returned int",
            "/bad-tuple": "tuple of 4 items",
            "/bad-status": "status 99 is out of range",
            "/bad-header": "invalid response header",
        }
        for path, expected in cases.items():
            status, headers, body = self.get(path)
            self.assertEqual(status, 500, path)
            self.assertIn(expected, body.decode(), path)
            self.assertNotIn("Injected", str(headers))
