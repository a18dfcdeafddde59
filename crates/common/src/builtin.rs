//! Builtin handlers that need no program: `ping` and `echo`.

use crate::handler::{Handler, HandlerError, JobRequest, JobResponse, ResponseBody};
use bytes::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;

/// Answers `pong` to anything.
#[derive(Debug, Default)]
pub struct Ping;

impl Handler for Ping {
    fn is_inline(&self) -> bool {
        true
    }

    fn handle(&self, _req: &JobRequest) -> Result<JobResponse, HandlerError> {
        let mut resp = Response::new(ResponseBody::Full(Bytes::from_static(b"pong\n")));
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Ok(resp)
    }
}

/// Answers with the request body and its content type.
#[derive(Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    fn is_inline(&self) -> bool {
        true
    }

    fn handle(&self, req: &JobRequest) -> Result<JobResponse, HandlerError> {
        let mut resp = Response::new(ResponseBody::Full(req.body.clone()));
        let ct = req
            .headers
            .get(CONTENT_TYPE)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
        resp.headers_mut().insert(CONTENT_TYPE, ct);
        Ok(resp)
    }
}
