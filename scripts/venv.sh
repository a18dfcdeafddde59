#!/usr/bin/env bash
# Create (or update) the Python venv at .venv that the tests and examples use: scikit-learn for
# examples/iris, gunicorn as a third-party worker and benchmark anchor, prometheus_client for its
# reference /metrics parsers. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python3 ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python3 -c 'import sklearn, gunicorn, prometheus_client' >/dev/null 2>&1; then
  .venv/bin/pip install --quiet --disable-pip-version-check scikit-learn gunicorn prometheus_client
fi
