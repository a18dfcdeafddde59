#!/usr/bin/env python3
"""Run with: fiddler_crab (the embedded default serves it at POST /wordcount).

Counts lines, words and bytes of the request body (stdin) and prints them as JSON, like `wc`.
A CGI/1.1 program: the request arrives in its environment (REQUEST_METHOD, QUERY_STRING, ...).
"""
import json
import os
import sys

data = sys.stdin.buffer.read()
text = data.decode("utf-8", errors="replace")
print(json.dumps({
    "lines": text.count("\n"),
    "words": len(text.split()),
    "bytes": len(data),
    "method": os.environ.get("REQUEST_METHOD", ""),
}))
