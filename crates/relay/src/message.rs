//! The messages a proxy relays: the request as forwarded, and the answer's head and bounded body.

use bytes::{Bytes, BytesMut};
use common::handler::{BodyFailure, BodyStream, JobRequest, JobResponse};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use hyper::http::response::Parts;
use hyper::{HeaderMap, Method, Request, Response, Uri, Version};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};

/// `X-Forwarded-For`, built once at compile time (`from_static` checks its name on every call).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Largest slice of a forwarded request's body handed to hyper at once.
pub const SLICE: usize = 16 * 1024;

/// The body of a forwarded request, handed to hyper in slices of at most [`SLICE`] bytes: the
/// whole request body, already read, or the client's body read as the upstream takes it
/// ([`OutBody::streamed`]). Slices, because the client connections write each message as one
/// buffer ([`crate::conn`]), which keeps the largest size it ever held for the life of the pooled
/// connection: with slices, hyper's `max_buf_size` bounds it, whatever the body's size.
#[derive(Debug, Default)]
pub struct OutBody(Out);

#[derive(Debug)]
enum Out {
    Whole(Bytes),
    Streamed(Box<Streamed>),
}

impl Default for Out {
    fn default() -> Out {
        Out::Whole(Bytes::new())
    }
}

/// A client's body on its way: the part of the last chunk not yet handed on, the bytes read so
/// far against the limit, and the deadline of the whole read (a timer made at the first poll,
/// looked at whenever the client's next bytes are not there yet).
#[derive(Debug)]
struct Streamed {
    body: hyper::body::Incoming,
    stream: BodyStream,
    rest: Bytes,
    read: u64,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl OutBody {
    /// The body `bytes`.
    pub fn new(bytes: Bytes) -> OutBody {
        OutBody(Out::Whole(bytes))
    }

    /// The client's body `body`, bounded by `stream`'s limit and read timeout; a body that stops
    /// short ends the request with an error and is recorded in `stream` (see
    /// [`BodyStream::fail`]).
    pub fn streamed(body: hyper::body::Incoming, stream: BodyStream) -> OutBody {
        OutBody(Out::Streamed(Box::new(Streamed {
            body,
            stream,
            rest: Bytes::new(),
            read: 0,
            deadline: None,
        })))
    }
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = BodyFailure;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyFailure>>> {
        use std::task::Poll;
        let streamed = match &mut self.0 {
            Out::Whole(rest) if rest.is_empty() => return Poll::Ready(None),
            Out::Whole(rest) => return Poll::Ready(Some(Ok(next_slice(rest)))),
            Out::Streamed(streamed) => streamed,
        };
        if !streamed.rest.is_empty() {
            return Poll::Ready(Some(Ok(next_slice(&mut streamed.rest))));
        }
        // The whole read is timed from its start.
        let timeout = streamed.stream.read_timeout();
        let deadline = streamed
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        loop {
            let failed = match std::pin::Pin::new(&mut streamed.body).poll_frame(cx) {
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are not forwarded (as with a body read whole).
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    streamed.read += data.len() as u64;
                    if streamed.read > streamed.stream.limit() {
                        BodyFailure::TooLarge
                    } else if data.is_empty() {
                        continue;
                    } else {
                        streamed.rest = data;
                        return Poll::Ready(Some(Ok(next_slice(&mut streamed.rest))));
                    }
                }
                Poll::Ready(Some(Err(_))) => BodyFailure::Unreadable,
                Poll::Pending => {
                    if deadline.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    BodyFailure::TooSlow
                }
            };
            streamed.stream.fail(failed);
            self.0 = Out::default();
            return Poll::Ready(Some(Err(failed)));
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Out::Whole(rest) => rest.is_empty(),
            Out::Streamed(streamed) => streamed.rest.is_empty() && streamed.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match &self.0 {
            Out::Whole(rest) => hyper::body::SizeHint::with_exact(rest.len() as u64),
            Out::Streamed(streamed) => {
                let body = streamed.body.size_hint();
                let rest = streamed.rest.len() as u64;
                if rest == 0 {
                    return body;
                }
                let mut hint = hyper::body::SizeHint::new();
                hint.set_lower(body.lower().saturating_add(rest));
                if let Some(upper) = body.upper() {
                    hint.set_upper(upper.saturating_add(rest));
                }
                hint
            }
        }
    }
}

/// The next slice of `rest`, at most [`SLICE`] bytes.
fn next_slice(rest: &mut Bytes) -> hyper::body::Frame<Bytes> {
    hyper::body::Frame::data(rest.split_to(rest.len().min(SLICE)))
}

/// What a forwarded request says about where it came from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forwarding {
    /// `X-Forwarded-Proto` to set (`http` or `https`), if any.
    pub proto: Option<&'static str>,
}

/// The request to forward: method, `target` (path and query) and body as given, headers as the
/// client sent them minus hop-by-hop headers and `Expect` (the body is already here, or this
/// server answered the expectation when it began to read a forwarded one), with `Host`
/// (from the request target if the client sent none, as HTTP/2 clients do), an exact
/// `Content-Length` (none on a request without content whose method anticipates none, unless
/// the client sent one: RFC 9110 section 8.6), the client's address appended to `X-Forwarded-For`, and
/// `X-Forwarded-Proto` if `forwarding` says one.
pub fn outgoing(req: &JobRequest, target: Uri, forwarding: Forwarding) -> Request<OutBody> {
    outgoing_with(req, req.headers.clone(), target, forwarding)
}

/// [`outgoing`] with `headers`, the request's own, moved in by a caller that owns the request
/// (no copy of the header map).
pub fn outgoing_with(
    req: &JobRequest,
    mut headers: HeaderMap,
    target: Uri,
    forwarding: Forwarding,
) -> Request<OutBody> {
    // One pass over the names says which of the headers rewritten here are there: most requests
    // carry none of them but `Host`, and an absent one then costs no lookup by name.
    let seen = Seen::of(&headers);
    if seen.hop_by_hop {
        strip_all(&mut headers);
    }
    if seen.expect {
        headers.remove(EXPECT);
    }
    // `Connection` may have named `Host` itself.
    if !seen.host || (seen.hop_by_hop && !headers.contains_key(HOST)) {
        let host = req
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .unwrap_or_else(|| HeaderValue::from_static("localhost"));
        headers.insert(HOST, host);
    }
    let streamed = req.body_stream.take();
    // RFC 9110 section 8.6: no `Content-Length` on a request without content whose method
    // anticipates none (a `GET`), unless the client sent one. `POST`, `PUT`, `PATCH` and unknown
    // methods keep an exact `0`: some servers answer `411 Length Required` without it. A body
    // forwarded as it arrives keeps the client's `Content-Length` (hyper checked it), or goes
    // chunked without one.
    if streamed.is_none()
        && (!req.body.is_empty() || seen.content_length || anticipates_content(&req.method))
    {
        let length = match req.body.len() {
            0 => HeaderValue::from_static("0"),
            n => HeaderValue::from(n),
        };
        // `insert` replaces every value the client sent.
        headers.insert(CONTENT_LENGTH, length);
    }
    let earlier = if seen.forwarded_for {
        headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok())
    } else {
        None
    };
    if let Some(value) = forwarded_for_value(earlier, req.remote_addr.ip()) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    if let Some(proto) = forwarding.proto {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    let body = match streamed {
        Some(body) => OutBody::streamed(body, req.body_stream.clone()),
        None => OutBody::new(req.body.clone()),
    };
    let mut out = Request::new(body);
    *out.method_mut() = req.method.clone();
    *out.uri_mut() = target;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = headers;
    out
}

/// True unless `method`'s semantics anticipate no request content (RFC 9110 section 9.3).
fn anticipates_content(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::DELETE
            | Method::OPTIONS
            | Method::TRACE
            | Method::CONNECT
    )
}

/// Which of the request headers that [`outgoing_with`] rewrites a request carries.
#[derive(Debug, Default)]
struct Seen {
    /// A hop-by-hop header (see [`strip_hop_by_hop`]).
    hop_by_hop: bool,
    expect: bool,
    host: bool,
    forwarded_for: bool,
    content_length: bool,
}

impl Seen {
    fn of(headers: &HeaderMap) -> Seen {
        let mut seen = Seen::default();
        for name in headers.keys() {
            if *name == HOST {
                seen.host = true;
            } else if *name == EXPECT {
                seen.expect = true;
            } else if *name == X_FORWARDED_FOR {
                seen.forwarded_for = true;
            } else if *name == CONTENT_LENGTH {
                seen.content_length = true;
            } else if is_hop_by_hop(name) {
                seen.hop_by_hop = true;
            }
        }
        seen
    }
}

/// The request's own path and query, as a request target (`/` if it has none).
pub fn path_and_query(req: &JobRequest) -> Uri {
    req.uri
        .path_and_query()
        .cloned()
        .map_or_else(|| Uri::from_static("/"), Uri::from)
}

/// Why an answer's body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// It exceeded the limit; the connection must be dropped.
    TooLarge,
    /// The connection failed mid-body.
    Broken(String),
}

/// The answer's head as relayed: hop-by-hop headers removed, HTTP/1.1, and no `Content-Length`
/// (the front end frames the body it sends) except on an answer to `HEAD`, which keeps the
/// length the server declared.
pub fn answer_head(parts: Parts, method: &Method) -> Parts {
    head_of(parts, method, false)
}

/// [`answer_head`] for a body framed by its declared length, which it keeps: the client learns
/// the size as the server declared it (a download's progress; an HTTP/1.0 client's connection
/// kept), and a body cut short is visibly short of it.
pub fn answer_head_framed(parts: Parts, method: &Method) -> Parts {
    head_of(parts, method, true)
}

/// [`answer_head`], keeping the `Content-Length` also where `exact`.
fn head_of(mut parts: Parts, method: &Method, exact: bool) -> Parts {
    strip_hop_by_hop(&mut parts.headers);
    if method != Method::HEAD && !exact {
        parts.headers.remove(CONTENT_LENGTH);
    }
    parts.version = Version::HTTP_11;
    parts
}

/// The whole answer to a `method` request, its body bounded by `max` bytes, its head as
/// [`answer_head`] makes it, except that a `Content-Length` equal to the body read is kept.
pub fn read_bounded(
    resp: Response<hyper::body::Incoming>,
    method: &Method,
    max: usize,
) -> impl Future<Output = Result<JobResponse, BodyError>> + Send + '_ {
    let declared = common::handler::declared_length(resp.headers());
    read_bounded_declared(resp, method, max, declared)
}

/// [`read_bounded`] for a caller that looked up the answer's declared length already
/// ([`common::handler::declared_length`]).
///
/// The body read whole is exactly as long as a declared length whenever the upstream framed it
/// by that length (hyper's client reads no more and fails on less), so that header is kept then
/// and the front end writes it as it is: removing it cost a lookup, a removal and a shift in the
/// header map per answer. Any other length (a chunked body that also declared one, a `304`'s
/// length of the resource) is removed, and the front end frames the body it sends.
pub fn read_bounded_declared(
    resp: Response<hyper::body::Incoming>,
    method: &Method,
    max: usize,
    declared: Option<u64>,
) -> impl Future<Output = Result<JobResponse, BodyError>> + Send + '_ {
    // Split and wrapped before the `async` block, which then holds each part once (an `async fn`
    // would hold the answer twice: rust-lang/rust#62958).
    let (parts, body) = resp.into_parts();
    let collect = collect_bounded(body, max);
    async move {
        let body = collect.await?;
        let exact = declared == Some(body.len() as u64);
        Ok(Response::from_parts(
            head_of(parts, method, exact),
            body.into(),
        ))
    }
}

/// `body`'s data, whole, if it is at most `max` bytes (trailers are dropped). A body of one data
/// frame, as most small answers are, is that frame's bytes as they are; only a body of several
/// is copied into one buffer. (http-body-util's `collect` keeps every frame in a `VecDeque`,
/// an allocation per answer, before joining them.)
fn collect_bounded<B>(body: B, max: usize) -> impl Future<Output = Result<Bytes, BodyError>> + Send
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body = Limited::new(body, max);
    async move {
        let mut body = std::pin::pin!(body);
        // The first frame as it came, then (from a second one on) all of them joined.
        let mut first = Bytes::new();
        let mut joined = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    BodyError::TooLarge
                } else {
                    BodyError::Broken(format!("reading the answer: {e}"))
                }
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            if first.is_empty() {
                first = data;
                continue;
            }
            if joined.is_empty() {
                joined.extend_from_slice(&first);
            }
            joined.extend_from_slice(&data);
        }
        Ok(if joined.is_empty() {
            first
        } else {
            joined.freeze()
        })
    }
}

/// Remove the headers that belong to one connection, not to the message (RFC 9110 section
/// 7.6.1): `Connection` and every header it names, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade`.
///
/// One pass over the names first: a message with none of these (most of them) is left as it is,
/// without a lookup per name.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.keys().any(is_hop_by_hop) {
        strip_all(headers);
    }
}

/// True if `name` is hop-by-hop by itself (not because a `Connection` header names it: without a
/// `Connection` header, none is named).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TE
        || name == TRAILER
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str().starts_with("proxy-")
}

/// [`strip_hop_by_hop`]'s work, name by name.
fn strip_all(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

/// [`forwarded_for`] as a header value. The usual case (no earlier chain) is the client's address
/// alone, and consecutive requests on a thread mostly come from the same few clients: the last
/// address's value is kept per thread and shared (a reference count, not a new allocation and
/// text each time). An IPv4 address is written on the stack and copied once into the value.
fn forwarded_for_value(earlier: Option<&str>, ip: IpAddr) -> Option<HeaderValue> {
    if earlier.is_some() {
        // The string's buffer becomes the value's.
        return HeaderValue::from_maybe_shared(Bytes::from(forwarded_for(earlier, ip))).ok();
    }
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    // Without the kept value (a thread being torn down), the value is made afresh.
    LAST.try_with(|last| {
        let Ok(mut last) = last.try_borrow_mut() else {
            return address_value(ip);
        };
        if let Some((seen, value)) = last.as_ref() {
            if *seen == ip {
                return Some(value.clone());
            }
        }
        let value = address_value(ip)?;
        *last = Some((ip, value.clone()));
        Some(value)
    })
    .unwrap_or_else(|_| address_value(ip))
}

/// `ip` alone as an `X-Forwarded-For` value; an IPv4 address written on the stack and copied once.
fn address_value(ip: IpAddr) -> Option<HeaderValue> {
    match ip {
        IpAddr::V4(v4) => HeaderValue::from_str(ipv4_text(v4, &mut [0; 15])).ok(),
        IpAddr::V6(_) => HeaderValue::from_maybe_shared(Bytes::from(forwarded_for(None, ip))).ok(),
    }
}

/// `X-Forwarded-For` after this hop: `earlier` (the value the client sent, if any), then `ip`.
/// An IPv4 address as text, written digit by digit into `text` (`Display` goes through the
/// formatter's machinery on every request).
fn ipv4_text(v4: Ipv4Addr, text: &mut [u8; 15]) -> &str {
    let mut len = 0;
    let mut digits = itoa::Buffer::new();
    for (i, octet) in v4.octets().into_iter().enumerate() {
        let digits = digits.format(octet).as_bytes();
        let dot = usize::from(i > 0);
        let end = len + dot + digits.len();
        let Some(slot) = text.get_mut(len..end) else {
            break;
        };
        slot[..dot].fill(b'.');
        slot[dot..].copy_from_slice(digits);
        len = end;
    }
    text.get(..len)
        .and_then(|text| std::str::from_utf8(text).ok())
        .unwrap_or_default()
}

fn forwarded_for(earlier: Option<&str>, ip: IpAddr) -> String {
    let mut chain = String::with_capacity(earlier.map_or(0, |e| e.len() + 2) + 15);
    if let Some(earlier) = earlier {
        chain.push_str(earlier);
        chain.push_str(", ");
    }
    match ip {
        IpAddr::V4(v4) => chain.push_str(ipv4_text(v4, &mut [0; 15])),
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(chain, "{v6}");
        }
    }
    chain
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    /// The outgoing request is moved through hyper's dispatch several times per request: with a
    /// body one word larger than `Bytes` (a third variant for "empty"), every proxied `/ping`
    /// cost about 300 more instructions in `memcpy` (docs/BENCHMARKS.md 18.2).
    #[test]
    fn a_forwarded_body_is_no_larger_than_the_bytes_it_carries() {
        assert_eq!(std::mem::size_of::<OutBody>(), std::mem::size_of::<Bytes>());
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "upgrade"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-keep", "2"),
            ("content-type", "text/plain"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-keep", "content-type"]);
    }

    #[test]
    fn the_one_pass_check_gives_exactly_what_removing_name_by_name_gives() {
        let cases: &[&[(&str, &str)]] = &[
            // No hop-by-hop header: the fast path, nothing removed.
            &[],
            &[("host", "a"), ("x-secret", "1"), ("content-length", "3")],
            &[
                ("date", "now"),
                ("content-type", "text/plain"),
                ("x-proxy", "1"),
            ],
            // Each kind alone, then mixed: the slow path.
            &[
                ("connection", "x-secret"),
                ("x-secret", "1"),
                ("x-keep", "2"),
            ],
            &[("connection", "close"), ("host", "a")],
            &[
                ("Connection", " X-Secret , keep-alive"),
                ("x-secret", "1"),
                ("keep-alive", "5"),
            ],
            &[("keep-alive", "timeout=5"), ("x-keep", "2")],
            &[
                ("proxy-authorization", "Basic x"),
                ("proxy-foo", "1"),
                ("x-keep", "2"),
            ],
            &[("te", "trailers"), ("trailer", "x-sum"), ("x-keep", "2")],
            &[("transfer-encoding", "chunked"), ("upgrade", "websocket")],
            &[
                ("x-secret", "1"),
                ("connection", "x-secret, x-other"),
                ("x-other", "2"),
            ],
        ];
        for case in cases {
            let mut fast = headers(case);
            let mut slow = fast.clone();
            strip_hop_by_hop(&mut fast);
            strip_all(&mut slow);
            assert_eq!(fast, slow, "{case:?}");
            assert!(!fast.keys().any(is_hop_by_hop), "{case:?}");
            let named = case.iter().any(|(k, v)| {
                k.eq_ignore_ascii_case("connection") && v.to_ascii_lowercase().contains("x-secret")
            });
            assert!(!(named && fast.contains_key("x-secret")), "{case:?}");
        }
        let mut untouched = headers(cases[1]);
        strip_hop_by_hop(&mut untouched);
        assert_eq!(untouched, headers(cases[1]));
    }

    #[test]
    fn forwarded_for_writes_ipv4_and_ipv6_as_display_does_after_any_earlier_chain() {
        for ip in [
            IpAddr::from([0, 0, 0, 0]),
            IpAddr::from([192, 0, 2, 7]),
            IpAddr::from([255, 255, 255, 255]),
            IpAddr::from([10, 100, 9, 200]),
            "::1".parse().unwrap(),
            "2001:db8::7".parse().unwrap(),
            "::ffff:192.0.2.1".parse().unwrap(),
        ] {
            assert_eq!(forwarded_for(None, ip), ip.to_string());
            assert_eq!(
                forwarded_for(Some("10.0.0.1, 10.0.0.2"), ip),
                format!("10.0.0.1, 10.0.0.2, {ip}")
            );
        }
    }

    #[test]
    fn the_forwarded_for_value_is_the_chain_as_a_string() {
        for ip in [
            IpAddr::from([0, 0, 0, 0]),
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from([255, 255, 255, 255]),
            "2001:db8::7".parse().unwrap(),
        ] {
            for earlier in [None, Some("10.0.0.1")] {
                let value = forwarded_for_value(earlier, ip).unwrap();
                assert_eq!(value, forwarded_for(earlier, ip).as_str());
            }
        }
    }

    /// The value kept for the last address is that address's, whatever came before it.
    #[test]
    fn the_kept_forwarded_for_value_follows_the_address() {
        let ips: [IpAddr; 4] = [
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from([127, 0, 0, 1]),
            "2001:db8::7".parse().unwrap(),
            IpAddr::from([192, 0, 2, 7]),
        ];
        for ip in ips.iter().chain(ips.iter().rev()) {
            assert_eq!(
                forwarded_for_value(None, *ip).unwrap(),
                ip.to_string().as_str()
            );
        }
    }

    /// A body of the given frames (data, or an error as its text).
    struct Frames(std::collections::VecDeque<Result<&'static [u8], &'static str>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, &'static str>>> {
            let next = self.0.pop_front();
            std::task::Poll::Ready(
                next.map(|f| f.map(|d| hyper::body::Frame::data(Bytes::from_static(d)))),
            )
        }
    }

    fn collect(
        frames: &[Result<&'static [u8], &'static str>],
        max: usize,
    ) -> Result<Bytes, String> {
        let body = Frames(frames.iter().copied().collect());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime
            .block_on(collect_bounded(body, max))
            .map_err(|e| match e {
                BodyError::TooLarge => "too large".to_string(),
                BodyError::Broken(cause) => cause,
            })
    }

    #[test]
    fn a_bounded_body_is_its_chunks_joined_up_to_the_limit() {
        assert_eq!(collect(&[], 4).unwrap(), "");
        assert_eq!(collect(&[Ok(b"pong")], 4).unwrap(), "pong");
        assert_eq!(
            collect(&[Ok(b""), Ok(b"ab"), Ok(b""), Ok(b"cd")], 4).unwrap(),
            "abcd"
        );
        assert_eq!(collect(&[Ok(b"a"), Ok(b"b"), Ok(b"c")], 4).unwrap(), "abc");
        assert_eq!(collect(&[Ok(b"pong!")], 4).unwrap_err(), "too large");
        assert_eq!(
            collect(&[Ok(b"ab"), Ok(b"cd"), Ok(b"e")], 4).unwrap_err(),
            "too large"
        );
        assert_eq!(
            collect(&[Ok(b"ab"), Err("reset")], 4).unwrap_err(),
            "reading the answer: reset"
        );
    }

    #[test]
    fn the_forwarded_request_gets_the_target_host_length_and_forwarded_headers() {
        let req = JobRequest {
            method: Method::POST,
            uri: "http://example.test/predict?x=1".parse().unwrap(),
            version: Version::HTTP_2,
            headers: headers(&[
                ("x-forwarded-for", "10.0.0.1"),
                ("expect", "100-continue"),
                ("content-length", "999"),
                ("connection", "close"),
            ]),
            body: Bytes::from_static(b"abc"),
            remote_addr: ([192, 0, 2, 7], 5555).into(),
            local_addr: ([127, 0, 0, 1], 8080).into(),
            client: Default::default(),
            upgrade: Default::default(),
            body_stream: Default::default(),
        };
        let out = outgoing(&req, path_and_query(&req), Forwarding::default());
        assert_eq!(out.method(), Method::POST);
        assert_eq!(out.uri(), "/predict?x=1");
        assert_eq!(out.version(), Version::HTTP_11);
        let h = out.headers();
        assert_eq!(h[HOST], "example.test");
        assert_eq!(h[CONTENT_LENGTH], "3");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert!(!h.contains_key(EXPECT) && !h.contains_key(CONNECTION));
        assert!(!h.contains_key("x-forwarded-proto"));
        let proto = Forwarding {
            proto: Some("https"),
        };
        let out = outgoing(&req, Uri::from_static("/v1/x"), proto);
        assert_eq!(out.uri(), "/v1/x");
        assert_eq!(out.headers()["x-forwarded-proto"], "https");
        let mut named_host = req.clone();
        named_host.headers = headers(&[("host", "a.test"), ("connection", "host")]);
        let out = outgoing(
            &named_host,
            path_and_query(&named_host),
            Forwarding::default(),
        );
        assert_eq!(out.headers()[HOST], "example.test");
        let empty = JobRequest {
            body: Bytes::new(),
            ..req
        };
        let out = outgoing(&empty, path_and_query(&empty), Forwarding::default());
        assert_eq!(out.headers()[CONTENT_LENGTH], "0");
        // A method that anticipates no content gets no length unless the client sent one.
        let get = JobRequest {
            method: Method::GET,
            headers: headers(&[("host", "a.test")]),
            ..empty
        };
        let out = outgoing(&get, path_and_query(&get), Forwarding::default());
        assert!(!out.headers().contains_key(CONTENT_LENGTH));
        let get_with_length = JobRequest {
            headers: headers(&[("host", "a.test"), ("content-length", "0")]),
            ..get.clone()
        };
        let out = outgoing(
            &get_with_length,
            path_and_query(&get_with_length),
            Forwarding::default(),
        );
        assert_eq!(out.headers()[CONTENT_LENGTH], "0");
        for method in [
            Method::PUT,
            Method::PATCH,
            Method::from_bytes(b"PURGE").unwrap(),
        ] {
            let bodiless = JobRequest {
                method,
                ..get.clone()
            };
            let out = outgoing(&bodiless, path_and_query(&bodiless), Forwarding::default());
            assert_eq!(out.headers()[CONTENT_LENGTH], "0");
        }
    }

    #[tokio::test]
    async fn a_forwarded_body_goes_to_hyper_in_slices_and_whole() {
        let data: Bytes = (0..40 * 1024)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>()
            .into();
        let mut body = OutBody::new(data.clone());
        assert_eq!(body.size_hint().exact(), Some(data.len() as u64));
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        while let Some(frame) = body.frame().await {
            let chunk = frame.unwrap().into_data().unwrap();
            sizes.push(chunk.len());
            got.extend_from_slice(&chunk);
        }
        assert_eq!(sizes, [SLICE, SLICE, 8 * 1024]);
        assert_eq!(got, data);
        assert!(body.is_end_stream());
        assert!(OutBody::default().is_end_stream());
    }
}
