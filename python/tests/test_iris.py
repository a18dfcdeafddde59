"""The iris example: a real scikit-learn model, one request and a vectorised batch."""

import importlib.util
import json
import os
import unittest

from .support import EXAMPLES, WorkerTest, decode_batch, post_batch

HAVE_SKLEARN = importlib.util.find_spec("sklearn") is not None
SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.7, 3.0, 5.2, 2.3]
VERSICOLOR = [5.9, 2.8, 4.3, 1.3]


@unittest.skipUnless(HAVE_SKLEARN, "scikit-learn is not installed in this Python "
                     "(run with .venv/bin/python, see python/README.md)")
class Iris(WorkerTest):
    @classmethod
    def setUpClass(cls):
        from .support import Worker
        cls.w = Worker(os.path.join(EXAMPLES, "iris", "app.py"))

    @classmethod
    def tearDownClass(cls):
        cls.w.stop()

    def post(self, doc):
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        status, _, answer = self.w.request("POST", "/iris", body=body,
                                           headers={"Content-Type": "application/json"})
        return status, json.loads(answer)

    def test_one_flower(self):
        status, answer = self.post({"features": SETOSA})
        self.assertEqual((status, answer["species"]), (200, "setosa"))
        self.assertEqual(set(answer["probabilities"]), {"setosa", "versicolor", "virginica"})
        self.assertAlmostEqual(sum(answer["probabilities"].values()), 1.0, places=4)

    def test_instances(self):
        status, answer = self.post({"instances": [SETOSA, VERSICOLOR, VIRGINICA]})
        self.assertEqual(status, 200)
        self.assertEqual([p["species"] for p in answer["predictions"]],
                         ["setosa", "versicolor", "virginica"])

    def test_bad_input_is_400(self):
        for doc in ({"features": [1, 2]}, {"features": [1, 2, "x", 4]}, {"instances": []},
                    {"other": 1}, [1, 2, 3, 4], b"{not json"):
            status, answer = self.post(doc)
            self.assertEqual(status, 400, doc)
            self.assertIn("error", answer)

    def test_a_batch_equals_the_single_answers(self):
        docs = [{"features": SETOSA}, {"features": [1]}, {"instances": [VIRGINICA, VERSICOLOR]},
                {"features": VERSICOLOR}]
        items = [("POST", "/iris", "", [["Content-Type", "application/json"]], json.dumps(d).encode())
                 for d in docs]
        status, _, body = post_batch(self.w, items)
        self.assertEqual(status, 200)
        answers = decode_batch(body)
        self.assertEqual(len(answers), 4)
        for doc, (item_status, _, item_body) in zip(docs, answers):
            self.assertEqual((item_status, json.loads(item_body)), self.post(doc))
