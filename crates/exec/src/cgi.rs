//! Turning a program's stdout into the response: as is (`raw`) or as a CGI/1.1 response
//! (RFC 3875 section 6): a header block, a blank line, the body.

use bytes::Bytes;
use common::handler::{HandlerError, JobResponse, ResponseBody};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, LOCATION};
use hyper::{Response, StatusCode};

/// Header lines a CGI response may hold at most.
const MAX_HEADERS: usize = 64;

/// Headers that describe one connection or the framing, never passed on: hyper frames the body.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "content-length",
];

/// A `200` with `stdout` as the body, sent as `content_type`.
pub(crate) fn raw_response(stdout: Bytes, content_type: &HeaderValue) -> JobResponse {
    let mut resp = Response::new(stdout.into());
    resp.headers_mut()
        .insert(CONTENT_TYPE, content_type.clone());
    resp
}

/// Parse a CGI response: `Status` sets the status (else `302` with a `Location`, else `200`),
/// `Content-Type` defaults to `content_type`, other headers pass except hop-by-hop ones.
///
/// Lines may end in `\r\n` or `\n`. A `Location` is always a client redirect (this server does no
/// CGI local redirects). A header block with no header at all (stdout starting with a blank line)
/// is accepted; stdout without a blank line ending the block is not.
pub(crate) fn cgi_response(
    stdout: Bytes,
    content_type: &HeaderValue,
) -> Result<JobResponse, HandlerError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (body_start, headers) = match httparse::parse_headers(&stdout, &mut slots) {
        Ok(httparse::Status::Complete(parsed)) => parsed,
        Ok(httparse::Status::Partial) if stdout.is_empty() => {
            return Err(malformed("empty output, no header block"))
        }
        Ok(httparse::Status::Partial) => {
            return Err(malformed("no blank line after the header block"))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(malformed(&format!("more than {MAX_HEADERS} headers")))
        }
        Err(e) => return Err(malformed(&e.to_string())),
    };

    let mut resp = Response::new(ResponseBody::empty());
    let mut status = None;
    let mut has_location = false;
    for header in headers.iter() {
        if header.name.eq_ignore_ascii_case("status") {
            if status.is_some() {
                return Err(malformed("more than one Status header"));
            }
            status = Some(parse_status(header.value)?);
            continue;
        }
        let name = HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|_| malformed(&format!("bad header name `{}`", header.name)))?;
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        let value = HeaderValue::from_bytes(header.value)
            .map_err(|_| malformed(&format!("bad value for header `{}`", header.name)))?;
        has_location |= name == LOCATION;
        if name == CONTENT_TYPE {
            resp.headers_mut().insert(name, value);
        } else {
            resp.headers_mut().append(name, value);
        }
    }
    if !resp.headers().contains_key(CONTENT_TYPE) {
        resp.headers_mut()
            .insert(CONTENT_TYPE, content_type.clone());
    }
    *resp.status_mut() = match status {
        Some(code) => code,
        None if has_location => StatusCode::FOUND,
        None => StatusCode::OK,
    };
    *resp.body_mut() = stdout.slice(body_start..).into();
    Ok(resp)
}

/// Where the CGI header block at the start of `head` ends (`None`: not complete yet), or why it
/// can never be a header block. For a streamed run, which reads stdout until the block is whole.
pub(crate) fn header_end(head: &[u8]) -> Result<Option<usize>, HandlerError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(head, &mut slots) {
        Ok(httparse::Status::Complete((end, _))) => Ok(Some(end)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            Err(malformed(&format!("more than {MAX_HEADERS} headers")))
        }
        Err(e) => Err(malformed(&e.to_string())),
    }
}

/// `Status: 404 Not Found` → `404`. Three digits (100 to 999), then nothing or a reason phrase.
/// The reason phrase is dropped: the client sees the status code's canonical one.
fn parse_status(value: &[u8]) -> Result<StatusCode, HandlerError> {
    let bad = || {
        malformed(&format!(
            "invalid Status `{}`",
            String::from_utf8_lossy(value).trim()
        ))
    };
    let digits = value.get(..3).ok_or_else(bad)?;
    match value.get(3) {
        None | Some(b' ' | b'\t') => {}
        Some(_) => return Err(bad()),
    }
    StatusCode::from_bytes(digits).map_err(|_| bad())
}

fn malformed(what: &str) -> HandlerError {
    HandlerError::BadGateway(format!("malformed CGI response: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(out: &'static [u8]) -> Result<JobResponse, HandlerError> {
        cgi_response(
            Bytes::from_static(out),
            &HeaderValue::from_static("text/plain"),
        )
    }

    fn reason(r: Result<JobResponse, HandlerError>) -> String {
        match r {
            Err(HandlerError::BadGateway(m)) => m,
            other => panic!("expected BadGateway, got {other:?}"),
        }
    }

    #[test]
    fn status_content_type_and_extra_headers() {
        let r = parse(b"Status: 404 Not Found\r\nContent-Type: text/html\r\nX-Extra: 1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n<p>gone</p>").unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()[CONTENT_TYPE], "text/html");
        assert_eq!(r.headers()["x-extra"], "1");
        assert_eq!(r.headers().get_all("set-cookie").iter().count(), 2);
        assert!(!r.headers().contains_key("status"));
        assert_eq!(r.body().as_full().unwrap().as_ref(), b"<p>gone</p>");
    }

    #[test]
    fn bare_newlines_are_accepted() {
        let r = parse(b"Content-Type: application/json\n\n{\"a\":1}\n").unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(r.body().as_full().unwrap().as_ref(), b"{\"a\":1}\n");
    }

    #[test]
    fn defaults_and_location_redirect() {
        let r = parse(b"X-A: b\n\nbody").unwrap();
        assert_eq!(r.headers()[CONTENT_TYPE], "text/plain");
        let r = parse(b"Location: https://example.org/\n\n").unwrap();
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(r.headers()[LOCATION], "https://example.org/");
        let r = parse(b"Status: 301\nLocation: /x\n\n").unwrap();
        assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
        let r = parse(b"\nonly a body").unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.body().as_full().unwrap().as_ref(), b"only a body");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let r = parse(b"Connection: close\nTransfer-Encoding: chunked\nContent-Length: 99\nKeep-Alive: 5\nUpgrade: x\nTE: trailers\nTrailer: x\nX-Kept: y\n\nhi").unwrap();
        assert_eq!(r.headers().len(), 2, "{:?}", r.headers());
        assert_eq!(r.headers()["x-kept"], "y");
    }

    #[test]
    fn malformed_output_is_bad_gateway() {
        assert!(reason(parse(b"")).contains("empty output"));
        assert!(reason(parse(b"Content-Type: text/plain\nno blank line")).contains("malformed"));
        assert!(reason(parse(b"hello world\n\n")).starts_with("malformed CGI response"));
        assert!(reason(parse(b"Content-Type: text/plain\n")).contains("no blank line"));
        for bad in [
            &b"Status: 42\n\n"[..],
            b"Status: 1000\n\n",
            b"Status: abc\n\n",
            b"Status: 099 Low\n\n",
            b"Status: 200OK\n\n",
            b"Status:\n\n",
        ] {
            let r = cgi_response(
                Bytes::from_static(bad),
                &HeaderValue::from_static("text/plain"),
            );
            assert!(reason(r).contains("invalid Status"), "{bad:?}");
        }
        assert!(reason(parse(b"Status: 200\nStatus: 404\n\n")).contains("more than one"));
        let r = parse(b"Status: 999 Odd\n\n").unwrap();
        assert_eq!(r.status().as_u16(), 999);
    }
}
