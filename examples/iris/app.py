"""A real model behind fiddler_crab: scikit-learn's iris classifier.

setup() trains a logistic regression on the iris data set that scikit-learn ships (no
download); handle() classifies one flower or a list of them; handle_batch() classifies every
flower of a whole batch of requests with one vectorised predict_proba call.

    POST {"features": [5.1, 3.5, 1.4, 0.2]}
      -> {"species": "setosa", "probabilities": {"setosa": 0.98, "versicolor": 0.02, "virginica": 0.0}}
    POST {"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}
      -> {"predictions": [{"species": ..., "probabilities": ...}, ...]}
    anything else -> 400 {"error": "..."}
"""

import math

import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
MAX_INSTANCES = 10000

model = None
species = None


def setup():
    global model, species
    iris = load_iris()
    model = LogisticRegression(max_iter=1000, random_state=0)
    model.fit(iris.data, iris.target)
    species = [str(name) for name in iris.target_names]


class BadInput(ValueError):
    pass


def _row(value, where):
    if not isinstance(value, list) or len(value) != len(FEATURES):
        raise BadInput("%s must be a list of %d numbers (%s)" % (where, len(FEATURES), ", ".join(FEATURES)))
    for x in value:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise BadInput("%s must hold finite numbers only" % where)
    return value


def parse(request):
    """(rows, single): the rows to classify and whether the request asked for one flower."""
    if request.method != "POST":
        raise BadInput("POST a JSON body: {\"features\": [4 numbers]} or {\"instances\": [[4 numbers], ...]}")
    try:
        doc = request.json()
    except ValueError as e:
        raise BadInput(getattr(e, "message", str(e))) from None  # json() raises BadRequest
    if isinstance(doc, dict) and "features" in doc:
        return [_row(doc["features"], "features")], True
    if isinstance(doc, dict) and "instances" in doc:
        rows = doc["instances"]
        if not isinstance(rows, list) or not rows or len(rows) > MAX_INSTANCES:
            raise BadInput("instances must be a list of 1 to %d rows" % MAX_INSTANCES)
        return [_row(r, "instances[%d]" % i) for i, r in enumerate(rows)], False
    raise BadInput("expected {\"features\": [...]} or {\"instances\": [[...], ...]}")


def _prediction(probabilities):
    best = int(np.argmax(probabilities))
    return {
        "species": species[best],
        "probabilities": {name: round(float(p), 6) for name, p in zip(species, probabilities)},
    }


def _answer(probabilities, single):
    if single:
        return _prediction(probabilities[0])
    return {"predictions": [_prediction(p) for p in probabilities]}


def handle(request):
    try:
        rows, single = parse(request)
    except BadInput as e:
        return 400, {"error": str(e)}
    return _answer(model.predict_proba(np.asarray(rows, dtype=float)), single)


def handle_batch(requests):
    parsed = []
    for request in requests:
        try:
            parsed.append(parse(request))
        except BadInput as e:
            parsed.append(e)
    rows = [row for p in parsed if not isinstance(p, BadInput) for row in p[0]]
    # One predict_proba for every flower of every request in the batch.
    probabilities = model.predict_proba(np.asarray(rows, dtype=float)) if rows else None
    results = []
    at = 0
    for p in parsed:
        if isinstance(p, BadInput):
            results.append((400, {"error": str(p)}))
            continue
        n = len(p[0])
        results.append(_answer(probabilities[at:at + n], p[1]))
        at += n
    return results
