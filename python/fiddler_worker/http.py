"""HTTP/1.1 framing over one blocking socket: read a request, write a response or a stream.

Written by hand for speed: the peer is the fiddler_crab server on a local Unix socket, so this
parses strictly and answers anything odd with an error and a closed connection instead of
guessing. Limits: a head of 64 KiB (431 past it), a body of 1 GiB (413 past it).
"""

from http import HTTPStatus

from .request import Headers, Request

__all__ = ["Conn", "HttpError", "Closed", "read_request", "send_response", "send_stream",
           "REASONS", "MAX_HEAD", "MAX_BODY"]

MAX_HEAD = 64 * 1024
MAX_BODY = 1 << 30
MAX_CHUNK_LINE = 4096
# A body up to this size is sent in the same sendall as the head; a larger one separately, to
# skip copying it.
JOIN_LIMIT = 1 << 20

REASONS = {s.value: s.phrase for s in HTTPStatus}
_STATUS_LINES = {code: "HTTP/1.1 %d %s\r\n" % (code, phrase) for code, phrase in REASONS.items()}
_HEX = b"0123456789abcdefABCDEF"

# One receive buffer for the whole process: the helper serves one request at a time.
_scratch = bytearray(256 * 1024)
_scratch_view = memoryview(_scratch)


def status_line(status):
    line = _STATUS_LINES.get(status)
    return line if line is not None else "HTTP/1.1 %d Unknown\r\n" % status


class HttpError(Exception):
    """Malformed or oversized input: answered with `status` and `message`, then the connection
    is closed."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class Closed(Exception):
    """The peer closed the connection (or reset it)."""


class Conn:
    """One accepted connection and the bytes read from it but not parsed yet."""

    __slots__ = ("sock", "buf")

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def fill(self):
        """Read what is available (blocking until something is); Closed at end of stream."""
        try:
            n = self.sock.recv_into(_scratch)
        except (ConnectionResetError, BrokenPipeError):
            raise Closed() from None
        if not n:
            raise Closed()
        self.buf += _scratch_view[:n]

    def read_exact(self, n):
        buf = self.buf
        if len(buf) >= n:
            data = bytes(buf[:n])
            del buf[:n]
            return data
        # Receive the rest straight into a buffer of the final size.
        body = bytearray(n)
        have = len(buf)
        body[:have] = buf
        buf.clear()
        view = memoryview(body)
        sock = self.sock
        while have < n:
            try:
                k = sock.recv_into(view[have:])
            except (ConnectionResetError, BrokenPipeError):
                raise Closed() from None
            if not k:
                raise Closed()
            have += k
        view.release()
        return bytes(body)

    def read_line(self, limit):
        buf = self.buf
        start = 0
        while True:
            i = buf.find(b"\r\n", start)
            if i >= 0:
                line = bytes(buf[:i])
                del buf[:i + 2]
                return line
            if len(buf) > limit:
                raise HttpError(400, "line too long in a chunked body")
            start = max(0, len(buf) - 1)
            self.fill()


def read_request(conn):
    """The next whole request from conn.buf, reading the body from the socket if needed.

    Returns (request, keep_alive), or None when the buffer does not hold a whole head yet.
    Raises HttpError for bad input and Closed if the peer goes away mid-body."""
    buf = conn.buf
    while buf.startswith(b"\r\n"):  # empty lines before a request are allowed (RFC 9112 2.2)
        del buf[:2]
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise HttpError(431, "request head over %d bytes" % MAX_HEAD)
        return None
    if end > MAX_HEAD:
        raise HttpError(431, "request head over %d bytes" % MAX_HEAD)
    head = buf[:end].decode("latin-1")
    del buf[:end + 4]

    crlf = head.count("\r\n")
    if head.count("\n") != crlf or head.count("\r") != crlf:
        raise HttpError(400, "bare CR or LF in the request head")
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if version != "HTTP/1.1" and version != "HTTP/1.0":
        if version.startswith("HTTP/"):
            raise HttpError(505, "HTTP version not supported")
        raise HttpError(400, "malformed request line")

    pairs = []
    hmap = {}
    for i in range(1, len(lines)):
        line = lines[i]
        name, sep, value = line.partition(":")
        if not sep or not name or name[-1] in " \t" or name[0] in " \t":
            raise HttpError(400, "malformed header line")
        value = value.strip(" \t")
        pairs.append((name, value))
        key = name.lower()
        old = hmap.get(key)
        hmap[key] = value if old is None else old + ", " + value

    if target[0] != "/":
        target = _origin_form(target)
    path, _, query = target.partition("?")

    conn_header = hmap.get("connection")
    if version == "HTTP/1.1":
        keep_alive = conn_header is None or not _has_token(conn_header, "close")
    else:
        keep_alive = conn_header is not None and _has_token(conn_header, "keep-alive")

    te = hmap.get("transfer-encoding")
    cl = hmap.get("content-length")
    if te is None and cl is None:
        body = b""
    else:
        expect = hmap.get("expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise HttpError(417, "unsupported Expect")
            if version == "HTTP/1.1" and not buf:
                conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if te is not None:
            if cl is not None:
                raise HttpError(400, "both Content-Length and Transfer-Encoding")
            if version == "HTTP/1.0":
                raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
            if te.lower() != "chunked":
                raise HttpError(501, "unsupported Transfer-Encoding (only chunked)")
            body = _read_chunked(conn)
        else:
            length = _content_length(cl)
            body = conn.read_exact(length) if length else b""

    return Request(method, path, query, Headers(pairs, hmap), body, version), keep_alive


def _has_token(value, token):
    if "," not in value:
        return value.strip().lower() == token
    return any(t.strip().lower() == token for t in value.split(","))


def _origin_form(target):
    # "http://host/path?q" (absolute form) -> "/path?q"; anything else but "*" is malformed.
    if target == "*":
        return target
    lower = target[:8].lower()
    if lower.startswith("http://") or lower.startswith("https://"):
        rest = target.split("//", 1)[1]
        slash = rest.find("/")
        query = rest.find("?")
        if slash < 0 or (0 <= query < slash):
            return "/" + (rest[query:] if query >= 0 else "")
        return rest[slash:]
    raise HttpError(400, "malformed request target")


def _content_length(value):
    if not (value.isdigit() and value.isascii()):
        # A repeated header arrives joined ("5, 5"): fine only if every copy agrees.
        values = {v.strip() for v in value.split(",")}
        if len(values) != 1:
            raise HttpError(400, "conflicting Content-Length headers")
        value = values.pop()
        if not (value.isdigit() and value.isascii()):
            raise HttpError(400, "invalid Content-Length")
    if len(value) > 12 or int(value) > MAX_BODY:
        raise HttpError(413, "body over %d bytes" % MAX_BODY)
    return int(value)


def _read_chunked(conn):
    parts = []
    total = 0
    while True:
        line = conn.read_line(MAX_CHUNK_LINE)
        size = line.split(b";", 1)[0].strip(b" \t")
        if not size or len(size) > 16 or size.strip(_HEX):
            raise HttpError(400, "invalid chunk size")
        n = int(size, 16)
        if n == 0:
            break
        total += n
        if total > MAX_BODY:
            raise HttpError(413, "body over %d bytes" % MAX_BODY)
        parts.append(conn.read_exact(n))
        if conn.read_exact(2) != b"\r\n":
            raise HttpError(400, "chunk not followed by CRLF")
    # Trailer fields, if any, are read and dropped.
    trailer_bytes = 0
    while True:
        line = conn.read_line(MAX_CHUNK_LINE)
        if not line:
            break
        trailer_bytes += len(line)
        if trailer_bytes > MAX_HEAD:
            raise HttpError(431, "trailers over %d bytes" % MAX_HEAD)
    return b"".join(parts)


def _head(status, headers, extra):
    parts = [status_line(status)]
    for name, value in headers:
        parts.append(name)
        parts.append(": ")
        parts.append(value)
        parts.append("\r\n")
    parts.append(extra)
    return "".join(parts).encode("latin-1")


def _connection_header(keep_alive, http10):
    if not keep_alive:
        return "Connection: close\r\n"
    return "Connection: keep-alive\r\n" if http10 else ""


def send_response(sock, response, head_only, keep_alive, http10):
    """Write a whole response: head and body in one sendall, with Content-Length."""
    status = response.status
    body = response.body
    if status == 204 or status == 304:
        extra = _connection_header(keep_alive, http10) + "\r\n"
        sock.sendall(_head(status, response.headers, extra))
        return
    extra = "Content-Length: %d\r\n%s\r\n" % (len(body), _connection_header(keep_alive, http10))
    head = _head(status, response.headers, extra)
    if head_only:
        sock.sendall(head)
    elif len(body) <= JOIN_LIMIT:
        sock.sendall(head + body)
    else:
        sock.sendall(head)
        sock.sendall(body)


def send_error(sock, status, message):
    """A plain-text error answer that closes the connection."""
    body = message.encode("utf-8", "replace")
    extra = ("Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
             "Connection: close\r\n\r\n" % len(body))
    sock.sendall(_head(status, (), extra) + body)


def send_stream(sock, status, headers, first, rest, encode, head_only, keep_alive, http10):
    """Write a streamed response: `first` (bytes, already produced) then encode(item) for each
    item of `rest`, each sent as soon as it exists.

    HTTP/1.1 gets chunked transfer coding; HTTP/1.0 gets the raw bytes and the connection closes
    at the end. Returns normally after the last chunk; an exception from `rest` or `encode`
    propagates with the response left unterminated (the caller must close the connection, which
    is how the peer learns that the stream broke)."""
    if http10:
        sock.sendall(_head(status, headers, "Connection: close\r\n\r\n") + (b"" if head_only else first))
        if head_only:
            return
        for item in rest:
            data = encode(item)
            if data:
                sock.sendall(data)
        return
    extra = "Transfer-Encoding: chunked\r\n%s\r\n" % _connection_header(keep_alive, False)
    head = _head(status, headers, extra)
    if head_only:
        sock.sendall(head)
        return
    sock.sendall(b"%s%x\r\n%s\r\n" % (head, len(first), first))
    for item in rest:
        data = encode(item)
        if data:
            sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
    sock.sendall(b"0\r\n\r\n")
