//! A real HTTP/1 client: [`Client`] opens one fresh connection per request; [`H1Conn`] and
//! [`H2Conn`] keep one open across requests; [`Reply`] is what came back; raw bytes for the rest.

use super::{within, PATIENCE};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HOST;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// What the server answered.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// The HTTP version it came in.
    pub version: hyper::Version,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// A copyable handle to a server's address: one fresh HTTP/1.1 connection per request.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// The server's address.
    pub addr: SocketAddr,
}

impl Client {
    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(request("GET", path, Bytes::new())).await
    }

    /// `POST path` with `body`.
    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> Reply {
        self.send(request("POST", path, body.into())).await
    }

    /// Send `req`; the server must answer.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        let what = format!("{} {}", req.method(), req.uri());
        match self.try_send(req).await {
            Ok(reply) => reply,
            Err(e) => panic!("{what}: no answer: {e:?}"),
        }
    }

    /// Send `req`; an error means the connection ended without a (complete) answer.
    pub async fn try_send(&self, req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        let what = format!("{} {}", req.method(), req.uri());
        let exchange = async {
            let stream = TcpStream::connect(self.addr).await.expect("connect");
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            let driver = tokio::spawn(conn);
            let response: Response<hyper::body::Incoming> = sender.send_request(req).await?;
            let reply = read_reply(response).await?;
            drop(sender);
            driver.abort();
            Ok(reply)
        };
        match tokio::time::timeout(PATIENCE, exchange).await {
            Ok(result) => result,
            Err(_) => panic!("{what}: no answer within {PATIENCE:?}"),
        }
    }

    /// Send `req` on a fresh HTTP/1.1 connection and return once the response head is in: its
    /// body still streaming, read it with [`next_chunk`].
    pub async fn open(&self, req: Request<Full<Bytes>>) -> Response<hyper::body::Incoming> {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        within("the response head", sender.send_request(req))
            .await
            .expect("a response head")
    }

    /// Send `req` from a new task; await the handle for the reply.
    pub fn spawn(&self, req: Request<Full<Bytes>>) -> JoinHandle<Reply> {
        let client = *self;
        tokio::spawn(async move { client.send(req).await })
    }

    /// Write `request` as-is on a fresh connection and read until the server closes it. A reset
    /// ends the read like a close does: either way, what was read is all the server sent.
    pub async fn raw(&self, request: &[u8]) -> Vec<u8> {
        read_to_close(self.open_raw(request).await).await
    }

    /// Open a connection and write `request` on it; the caller reads, or drops it to leave.
    pub async fn open_raw(&self, request: &[u8]) -> TcpStream {
        let mut stream = TcpStream::connect(self.addr).await.expect("connect");
        stream.write_all(request).await.expect("write request");
        stream
    }

    /// Open one HTTP/1.1 connection to send several requests on, one after another.
    pub async fn connect_h1(&self) -> H1Conn {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        H1Conn {
            sender,
            driver: tokio::spawn(conn),
        }
    }

    /// Open one HTTP/2 connection with prior knowledge (h2c); its streams run concurrently.
    pub async fn connect_h2(&self) -> H2Conn {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .expect("HTTP/2 handshake");
        H2Conn {
            addr: self.addr,
            sender,
            driver: Arc::new(tokio::spawn(conn)),
        }
    }
}

/// The next data frame of a streamed body (`None` at its clean end; an error when it was cut
/// short). Empty frames (HTTP/2 may end a stream with one) are skipped.
pub async fn next_chunk(body: &mut hyper::body::Incoming) -> Option<Result<Bytes, hyper::Error>> {
    loop {
        match within("the next frame", body.frame()).await? {
            Ok(frame) => match frame.into_data() {
                Ok(data) if !data.is_empty() => return Some(Ok(data)),
                _ => continue,
            },
            Err(e) => return Some(Err(e)),
        }
    }
}

/// Read `body` until it has given exactly `expected` (more would fail the test): a streamed
/// answer's next event, as it comes.
pub async fn read_exactly(body: &mut hyper::body::Incoming, expected: &str) {
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let chunk = next_chunk(body).await.expect("the body ended early");
        got.extend_from_slice(&chunk.expect("a body chunk"));
    }
    assert_eq!(String::from_utf8_lossy(&got), expected);
}

/// Collect a response's whole body into a [`Reply`].
async fn read_reply(response: Response<hyper::body::Incoming>) -> Result<Reply, hyper::Error> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// One HTTP/1.1 connection kept open across requests (keep-alive).
pub struct H1Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    driver: JoinHandle<Result<(), hyper::Error>>,
}

impl H1Conn {
    /// Send `req` on this connection; the server must answer.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Reply {
        let what = format!("{} {}", req.method(), req.uri());
        match self.try_send(req).await {
            Ok(reply) => reply,
            Err(e) => panic!("{what}: no answer on the kept-open connection: {e:?}"),
        }
    }

    /// Send `req` on this connection; an error means it ended without a (complete) answer.
    pub async fn try_send(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        let what = format!("{} {}", req.method(), req.uri());
        let exchange = async {
            self.sender.ready().await?;
            read_reply(self.sender.send_request(req).await?).await
        };
        match tokio::time::timeout(PATIENCE, exchange).await {
            Ok(result) => result,
            Err(_) => panic!("{what}: no answer within {PATIENCE:?}"),
        }
    }

    /// Wait until the server has closed the connection (the client's driver ends); fails after
    /// [`PATIENCE`].
    pub async fn closed(mut self) {
        // The sender stays alive meanwhile, so the client does not close the connection itself.
        let _ = within("the server to close the connection", &mut self.driver).await;
    }
}

impl Drop for H1Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One HTTP/2 (h2c, prior knowledge) connection; clones share it, each request is a stream.
#[derive(Clone)]
pub struct H2Conn {
    addr: SocketAddr,
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    driver: Arc<JoinHandle<Result<(), hyper::Error>>>,
}

impl H2Conn {
    /// Send `req` as a new stream; the server must answer.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        let what = format!("{} {}", req.method(), req.uri());
        match self.try_send(req).await {
            Ok(reply) => reply,
            Err(e) => panic!("{what}: no answer on the HTTP/2 connection: {e:?}"),
        }
    }

    /// Send `req` as a new stream; an error means the stream (or the connection) was reset.
    pub async fn try_send(&self, mut req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        let what = format!("{} {}", req.method(), req.uri());
        // HTTP/2 carries scheme and authority as pseudo-headers: give the request an absolute URI.
        let path = req
            .uri()
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string());
        *req.uri_mut() = format!("http://{}{path}", self.addr)
            .parse()
            .expect("an absolute URI");
        req.headers_mut().remove(HOST);
        let mut sender = self.sender.clone();
        let exchange = async {
            sender.ready().await?;
            read_reply(sender.send_request(req).await?).await
        };
        match tokio::time::timeout(PATIENCE, exchange).await {
            Ok(result) => result,
            Err(_) => panic!("{what}: no answer within {PATIENCE:?}"),
        }
    }

    /// Send `req` as a new stream from a new task; await the handle for the outcome.
    pub fn spawn(&self, req: Request<Full<Bytes>>) -> JoinHandle<Result<Reply, hyper::Error>> {
        let conn = self.clone();
        tokio::spawn(async move { conn.try_send(req).await })
    }

    /// True while the connection is open.
    pub fn is_open(&self) -> bool {
        !self.driver.is_finished()
    }
}

impl Drop for H2Conn {
    fn drop(&mut self) {
        if Arc::strong_count(&self.driver) == 1 {
            self.driver.abort();
        }
    }
}

/// Read `stream` until the server closes it (or resets it: either way, what was read is all the
/// server sent); fails after [`PATIENCE`].
pub async fn read_to_close(mut stream: TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("raw read failed: {e}"),
            }
        }
    };
    if tokio::time::timeout(PATIENCE, read).await.is_err() {
        panic!("the server neither answered nor closed the connection within {PATIENCE:?}");
    }
    received
}

/// A request with a `Host` header.
pub fn request(method: &str, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "fiddler.test")
        .body(Full::new(body.into()))
        .expect("a valid request")
}

/// The bytes of a `POST path` with an empty body and `Connection: close`, for raw sends.
pub fn raw_post(path: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: fiddler.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}
