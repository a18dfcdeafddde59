#!/usr/bin/env python3
"""Conversations through fiddler_crab (benches/affinity.sh): CLIENTS threads, each holding
conversations one after another; a conversation is TURNS requests in turn, each `POST URL` with
`X-Session-Id` naming it (as a chat client sends its history each turn). Prints one line: the
requests, how many the upstream answered from its cache (`X-Cache: hit`), the non-200 answers,
the turns' p50 and p99 latency in ms, and the wall time. Standard library only; loopback.

    python3 benches/conversations.py URL CLIENTS CONVERSATIONS TURNS
"""
import http.client
import sys
import threading
import time
import urllib.parse

URL = urllib.parse.urlsplit(sys.argv[1])
CLIENTS, CONVERSATIONS, TURNS = (int(a) for a in sys.argv[2:5])

lock = threading.Lock()
latencies, hits, bad = [], [0], [0]
next_conversation = [0]


def client():
    conn = http.client.HTTPConnection(URL.hostname, URL.port, timeout=60)
    while True:
        with lock:
            c = next_conversation[0]
            if c >= CONVERSATIONS:
                return
            next_conversation[0] += 1
        for turn in range(TURNS):
            start = time.perf_counter()
            conn.request("POST", URL.path, body=f"turn {turn}",
                         headers={"X-Session-Id": f"conversation-{c}"})
            resp = conn.getresponse()
            resp.read()
            took = (time.perf_counter() - start) * 1000
            with lock:
                latencies.append(took)
                hits[0] += resp.getheader("X-Cache") == "hit"
                bad[0] += resp.status != 200


start = time.perf_counter()
threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
for t in threads:
    t.start()
for t in threads:
    t.join()
wall = time.perf_counter() - start
latencies.sort()
n = len(latencies)
print(f"requests {n} hits {hits[0]} ({100 * hits[0] / n:.0f}%) non-200 {bad[0]} "
      f"p50 {latencies[n // 2]:.1f} ms p99 {latencies[min(n - 1, n * 99 // 100)]:.1f} ms "
      f"wall {wall:.2f} s")
