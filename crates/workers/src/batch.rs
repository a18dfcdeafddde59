//! The batch wire format (`POST /.fiddler/batch`, docs/WORKERS.md): a batch of requests encoded
//! into one request for a worker, and the worker's batch answer decoded into one response per
//! request. `python/fiddler_worker/batch.py` is the other side.
//!
//! Each item is one JSON line ended by `\n`, then exactly `body_len` raw body bytes. A batch
//! answer that does not hold exactly the items asked for, framed so, is malformed as a whole.

use crate::proxy::to_worker;
use bytes::{BufMut, Bytes, BytesMut};
use common::handler::{ClientWatch, JobRequest, JobResponse, ResponseBody};
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{HeaderMap, Method, Response, StatusCode, Uri, Version};
use relay::message::strip_hop_by_hop;

/// The path a batch is posted to.
pub(crate) const BATCH_PATH: &str = "/.fiddler/batch";
/// The content type of a batch and of its answer.
pub(crate) const BATCH_TYPE: &str = "application/x-fiddler-batch";
/// The header that says how many items a batch holds.
pub(crate) const COUNT_HEADER: &str = "x-fiddler-batch";
/// Room for an item's JSON line beyond its body, when bounding a whole batch answer.
pub(crate) const ITEM_HEAD_ALLOWANCE: usize = 64 * 1024;

/// One request item's JSON line.
#[derive(serde::Serialize)]
struct RequestLine<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: Vec<(&'a str, String)>,
    body_len: usize,
}

/// One answer item's JSON line.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerLine {
    status: u16,
    #[serde(default)]
    headers: Vec<(String, String)>,
    body_len: usize,
}

/// The one request to the worker that carries `reqs` (the client's address of the first one in
/// its `X-Forwarded-For`, as the items carry their own).
pub(crate) fn encode(reqs: &[&JobRequest]) -> JobRequest {
    let mut body = BytesMut::new();
    for req in reqs {
        // The headers a single request would be sent with (hop-by-hop removed, Host and
        // X-Forwarded-For added), minus Content-Length: `body_len` frames the item.
        let sent = to_worker(req);
        let headers = sent
            .headers()
            .iter()
            .filter(|(name, _)| **name != CONTENT_LENGTH)
            .map(|(name, value)| {
                (
                    name.as_str(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        let line = RequestLine {
            method: req.method.as_str(),
            path: req.uri.path(),
            query: req.uri.query().unwrap_or(""),
            headers,
            body_len: req.body.len(),
        };
        // Serialising plain strings and numbers cannot fail; an empty line would be caught by
        // the worker as a malformed batch.
        if let Ok(json) = serde_json::to_vec(&line) {
            body.put_slice(&json);
        }
        body.put_u8(b'\n');
        body.put_slice(&req.body);
    }
    let mut headers = HeaderMap::new();
    headers.insert(HOST, HeaderValue::from_static("localhost"));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(BATCH_TYPE));
    headers.insert(
        HeaderName::from_static(COUNT_HEADER),
        HeaderValue::from(reqs.len()),
    );
    let (remote_addr, local_addr) = reqs.first().map_or_else(
        || (([127, 0, 0, 1], 0).into(), ([127, 0, 0, 1], 0).into()),
        |r| (r.remote_addr, r.local_addr),
    );
    JobRequest {
        method: Method::POST,
        uri: Uri::from_static(BATCH_PATH),
        version: Version::HTTP_11,
        headers,
        body: body.freeze(),
        remote_addr,
        local_addr,
        client: ClientWatch::default(),
        upgrade: Default::default(),
        body_stream: Default::default(),
    }
}

/// The `n` responses in a worker's batch answer, in order; `Err` says why the answer is
/// malformed (then no item counts). Each item larger than `max_item` bytes is answered `502` on
/// its own.
pub(crate) fn decode(
    answer: &JobResponse,
    n: usize,
    max_item: usize,
) -> Result<Vec<Result<JobResponse, String>>, String> {
    let Some(body) = answer.body().as_full() else {
        return Err("the batch answer was streamed, not a whole body".into());
    };
    if answer.status() != StatusCode::OK {
        let reason = String::from_utf8_lossy(&body[..body.len().min(200)])
            .trim()
            .to_string();
        return Err(format!(
            "the batch was answered {} ({reason})",
            answer.status().as_u16()
        ));
    }
    let mut items = Vec::with_capacity(n);
    let mut pos = 0;
    while pos < body.len() {
        let index = items.len();
        if index >= n {
            return Err(format!("more than the {n} items asked for"));
        }
        let rest = body.slice(pos..);
        let nl = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("item {index}: no newline after its JSON line"))?;
        let line: AnswerLine = serde_json::from_slice(&rest[..nl])
            .map_err(|e| format!("item {index}: invalid JSON line: {e}"))?;
        let start = nl + 1;
        let end = start
            .checked_add(line.body_len)
            .filter(|&end| end <= rest.len())
            .ok_or_else(|| format!("item {index}: body_len runs past the end of the answer"))?;
        items.push(item(line, rest.slice(start..end), max_item, index)?);
        pos += end;
    }
    if items.len() != n {
        return Err(format!("{} items for the {n} asked for", items.len()));
    }
    Ok(items)
}

/// One decoded answer item: its status, its headers (hop-by-hop and framing removed), its body.
fn item(
    line: AnswerLine,
    body: Bytes,
    max_item: usize,
    index: usize,
) -> Result<Result<JobResponse, String>, String> {
    let status = StatusCode::from_u16(line.status)
        .map_err(|_| format!("item {index}: invalid status {}", line.status))?;
    let mut headers = HeaderMap::new();
    for (name, value) in line.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("item {index}: invalid header name"))?;
        let value = HeaderValue::from_str(&value)
            .map_err(|_| format!("item {index}: invalid value of header {name}"))?;
        headers.append(name, value);
    }
    if body.len() > max_item {
        return Ok(Err(format!(
            "worker answer larger than max_response_bytes ({max_item})"
        )));
    }
    strip_hop_by_hop(&mut headers);
    headers.remove(CONTENT_LENGTH);
    let mut response = Response::new(ResponseBody::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(Ok(response))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, body: &'static [u8]) -> JobRequest {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        headers.insert("connection", HeaderValue::from_static("keep-alive"));
        JobRequest {
            method: Method::POST,
            uri: path.parse().unwrap(),
            version: Version::HTTP_11,
            headers,
            body: Bytes::from_static(body),
            remote_addr: ([192, 0, 2, 1], 1).into(),
            local_addr: ([127, 0, 0, 1], 2).into(),
            client: Default::default(),
            upgrade: Default::default(),
            body_stream: Default::default(),
        }
    }

    fn answer(status: u16, body: &'static [u8]) -> JobResponse {
        let mut r = Response::new(ResponseBody::from(Bytes::from_static(body)));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r
    }

    #[test]
    fn a_batch_is_one_json_line_and_the_raw_body_per_item() {
        let a = request("/predict?x=1", b"{\"a\": 1}");
        let b = request("/p%20q", b"");
        let out = encode(&[&a, &b]);
        assert_eq!(out.uri, BATCH_PATH);
        assert_eq!(out.headers[COUNT_HEADER], "2");
        assert_eq!(out.headers[CONTENT_TYPE], BATCH_TYPE);
        let text = std::str::from_utf8(&out.body).unwrap();
        let mut lines = text.split('\n');
        let first: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(first["method"], "POST");
        assert_eq!(first["path"], "/predict");
        assert_eq!(first["query"], "x=1");
        assert_eq!(first["body_len"], 8);
        let names: Vec<&str> = first["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h[0].as_str().unwrap())
            .collect();
        assert!(names.contains(&"content-type") && names.contains(&"x-forwarded-for"));
        assert!(!names.contains(&"content-length") && !names.contains(&"connection"));
        let rest = lines.next().unwrap();
        assert!(rest.starts_with("{\"a\": 1}{"), "{rest}");
        let second: serde_json::Value = serde_json::from_str(&rest[8..]).unwrap();
        assert_eq!(second["path"], "/p%20q");
        assert_eq!(second["query"], "");
        assert_eq!(second["body_len"], 0);
    }

    #[test]
    fn an_answer_gives_each_item_its_status_headers_and_body() {
        let body: &'static [u8] = b"{\"status\": 200, \"headers\": [[\"Content-Type\", \"text/plain\"], [\"Connection\", \"close\"]], \"body_len\": 2}\nhi{\"status\": 500, \"headers\": [], \"body_len\": 4}\noops";
        let items = decode(&answer(200, body), 2, 1024).unwrap();
        let first = items[0].as_ref().unwrap();
        assert_eq!(first.status(), 200);
        assert_eq!(first.headers()[CONTENT_TYPE], "text/plain");
        assert!(!first.headers().contains_key("connection"));
        assert_eq!(first.body().as_full().unwrap().as_ref(), b"hi");
        let second = items[1].as_ref().unwrap();
        assert_eq!(second.status(), 500);
        assert_eq!(second.body().as_full().unwrap().as_ref(), b"oops");
        // An item over the cap fails alone.
        let items = decode(&answer(200, body), 2, 3).unwrap();
        assert!(items[0].is_ok());
        assert!(items[1]
            .as_ref()
            .unwrap_err()
            .contains("max_response_bytes"));
    }

    #[test]
    fn a_malformed_answer_is_an_error_for_the_whole_batch() {
        let one: &'static [u8] = b"{\"status\": 200, \"body_len\": 2}\nhi";
        let cases: [(u16, &'static [u8], usize, &str); 6] = [
            (400, b"missing X-Fiddler-Batch header", 1, "answered 400"),
            (200, one, 2, "1 items for the 2 asked for"),
            (
                200,
                b"{\"status\": 200, \"body_len\": 2}\nhi{\"status\": 200, \"body_len\": 0}\n",
                1,
                "more than the 1",
            ),
            (
                200,
                b"{\"status\": 200, \"body_len\": 9}\nhi",
                1,
                "runs past the end",
            ),
            (200, b"not json\nhi", 1, "invalid JSON line"),
            (200, b"{\"status\": 200, \"body_len\": 2}", 1, "no newline"),
        ];
        for (status, body, n, expect) in cases {
            let e = decode(&answer(status, body), n, 1024).unwrap_err();
            assert!(e.contains(expect), "{e} should say {expect}");
        }
        let e = decode(&answer(200, b"{\"status\": 99, \"body_len\": 0}\n"), 1, 9).unwrap_err();
        assert!(e.contains("invalid status 99"), "{e}");
    }
}
