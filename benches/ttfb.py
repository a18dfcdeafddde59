"""Time to first byte of a streamed response against its producer's first chunk, for
benches/stream.sh.

    python3 benches/ttfb.py HOST PORT PATH REQUESTS LABEL [--every-token]

The producer's first chunk (or a whole answer's body) is a line holding the wall-clock time (ns
since the epoch) at which it wrote it; for each request (one connection each, HTTP/1.1), the client notes the wall clock when
the bytes completing that line arrive, and the difference is one sample. Prints one markdown
table row: label, requests, p50, p99, max (microseconds). With --every-token, every chunk of the
answer that is such a line is a sample (a token stream's tokens: the time each waited on its
way), and the count is of samples.
"""

import socket
import sys
import time


def received(sock, what):
    """Each read's bytes with their arrival time (ns); a close before `what` is an error."""
    while True:
        data = sock.recv(65536)
        now = time.time_ns()
        if not data:
            raise RuntimeError("connection closed before " + what)
        yield data, now


def first_line(sock):
    """Read until the first body line of a chunked response is whole; its text and arrival time."""
    buf = b""
    for data, now in received(sock, "the first chunk"):
        buf += data
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            continue
        head, body = buf[:head_end], buf[head_end + 4:]
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError("unexpected answer: %r" % head[:200])
        if b"transfer-encoding: chunked" not in head.lower():
            # A whole answer (Content-Length): its body's first line.
            if b"content-length:" not in head.lower():
                raise RuntimeError("neither chunked nor framed by a length: %r" % head)
            line_end = body.find(b"\n")
            if line_end < 0:
                continue
            return body[:line_end].decode(), now
        size_end = body.find(b"\r\n")
        if size_end < 0:
            continue
        chunk = body[size_end + 2:]
        line_end = chunk.find(b"\n")
        if line_end < 0:
            continue
        return chunk[:line_end].decode(), now


def every_token(sock):
    """Read a chunked answer to its end; for every time stamp line in its chunks, the µs from
    its stamp to the arrival of the bytes completing its chunk."""
    buf = b""
    body = None
    samples = []
    for data, now in received(sock, "the last chunk"):
        buf += data
        if body is None:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                continue
            if b"transfer-encoding: chunked" not in buf[:head_end].lower():
                raise RuntimeError("not a streamed (chunked) answer: %r" % buf[:head_end])
            buf = buf[head_end + 4:]
            body = True
        while True:
            size_end = buf.find(b"\r\n")
            if size_end < 0:
                break
            size = int(buf[:size_end].split(b";")[0], 16)
            if len(buf) < size_end + 2 + size + 2:
                break
            chunk = buf[size_end + 2:size_end + 2 + size]
            buf = buf[size_end + 2 + size + 2:]
            if size == 0:
                return samples
            # A proxy that held tokens back may pass several on in one chunk.
            for line in chunk.split(b"\n"):
                if line.strip().isdigit():
                    samples.append((now - int(line)) / 1000.0)


def main():
    host, port, path, requests, label = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
    tokens = len(sys.argv) > 6 and sys.argv[6] == "--every-token"
    request = ("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)).encode()
    samples = []
    for _ in range(requests):
        with socket.create_connection((host, port)) as sock:
            sock.sendall(request)
            if tokens:
                samples.extend(every_token(sock))
                continue
            text, arrived = first_line(sock)
            samples.append((arrived - int(text)) / 1000.0)
            while sock.recv(65536):
                pass
    samples.sort()

    def pct(p):
        return samples[min(len(samples) - 1, int(p / 100.0 * len(samples)))]

    print("| %s | %d | %.0f | %.0f | %.0f |" % (label, len(samples), pct(50), pct(99), samples[-1]))


if __name__ == "__main__":
    main()
