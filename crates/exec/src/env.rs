//! The child's environment: a short allow-list from the server, the configured pairs, and the
//! CGI/1.1 meta-variables (RFC 3875 section 4.1) that describe the request.
//!
//! Precedence, lowest first: the server's `PATH`, `LANG`, `HOME` and `pass_env` names; the
//! request's meta-variables; the endpoint's configured `env` pairs (the operator's explicit choice
//! wins). Nothing else from the server's environment reaches the child.

use common::handler::JobRequest;
use config::ExecConfig;
use hyper::header::{HeaderName, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::Version;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::IpAddr;

/// The complete environment for one run of `cfg`'s program on `req`.
pub(crate) fn child_env(
    endpoint: &str,
    cfg: &ExecConfig,
    req: &JobRequest,
) -> BTreeMap<String, OsString> {
    let mut env = children::passed_env(cfg.pass_env.iter().map(String::as_str));
    for (name, value) in cgi_vars(endpoint, req) {
        env.insert(name, OsString::from(value));
    }
    for (name, value) in &cfg.env {
        env.insert(name.clone(), OsString::from(value));
    }
    env
}

/// The part of `path` after the endpoint path `script_name` (RFC 3875 §4.1.5): empty when the
/// request is for the endpoint path itself; the whole path if it does not start with it.
fn path_info<'a>(script_name: &str, path: &'a str) -> &'a str {
    match path.strip_prefix(script_name.trim_end_matches('/')) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => path,
    }
}

/// The CGI/1.1 meta-variables for `req` arriving at the endpoint `endpoint`.
///
/// `SCRIPT_NAME` is the endpoint path and `PATH_INFO` the part of the request path after it
/// (RFC 3875 §4.1.5), as received (not percent-decoded): empty for a request to the endpoint
/// path itself.
///
/// Every request header becomes `HTTP_<NAME>` (upper case, `-` as `_`, repeated values joined
/// with `", "`), except: `Content-Type` and `Content-Length` (they are `CONTENT_TYPE` and
/// `CONTENT_LENGTH`), `Proxy` (never `HTTP_PROXY`: httpoxy), names holding anything but ASCII
/// letters, digits and `-` (so `X_Forwarded_For` cannot pose as `X-Forwarded-For`), and values
/// that are not UTF-8 or hold a NUL.
pub(crate) fn cgi_vars(endpoint: &str, req: &JobRequest) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    let mut set = |name: &str, value: String| {
        vars.insert(name.to_string(), value);
    };
    set("GATEWAY_INTERFACE", "CGI/1.1".into());
    set("SERVER_PROTOCOL", protocol(req.version).into());
    set(
        "SERVER_SOFTWARE",
        concat!("fiddler_crab/", env!("CARGO_PKG_VERSION")).into(),
    );
    set("REQUEST_METHOD", req.method.as_str().into());
    set("SCRIPT_NAME", endpoint.into());
    set("PATH_INFO", path_info(endpoint, req.uri.path()).into());
    set("QUERY_STRING", req.uri.query().unwrap_or("").into());
    if let Some(ct) = req
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| text(v.as_bytes()))
    {
        set("CONTENT_TYPE", ct.into());
    }
    if !req.body.is_empty() {
        set("CONTENT_LENGTH", req.body.len().to_string());
    }
    set(
        "REMOTE_ADDR",
        req.remote_addr.ip().to_canonical().to_string(),
    );
    set("REMOTE_PORT", req.remote_addr.port().to_string());
    set("SERVER_NAME", server_name(req));
    set("SERVER_PORT", req.local_addr.port().to_string());

    for name in req.headers.keys() {
        let Some(var) = header_var(name) else {
            continue;
        };
        let values: Vec<&str> = req
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| text(v.as_bytes()))
            .collect();
        if !values.is_empty() {
            vars.insert(var, values.join(", "));
        }
    }
    vars
}

/// `SERVER_PROTOCOL` for an HTTP version.
fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// `SERVER_NAME`: the `Host` header (or HTTP/2 authority) without its port, else the local IP.
fn server_name(req: &JobRequest) -> String {
    let host = req
        .headers
        .get(HOST)
        .and_then(|v| text(v.as_bytes()))
        .or_else(|| req.uri.host())
        .map(strip_port)
        .filter(|h| !h.is_empty());
    match host {
        Some(h) => h.to_string(),
        None => match req.local_addr.ip().to_canonical() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        },
    }
}

/// `host[:port]` → `host`, keeping an IPv6 literal's brackets (`[::1]:8080` → `[::1]`).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, _port)) => name,
        None => host,
    }
}

/// The `HTTP_*` variable for a header, or `None` for a header that must not become one.
fn header_var(name: &HeaderName) -> Option<String> {
    if name == CONTENT_TYPE || name == CONTENT_LENGTH {
        return None;
    }
    let name = name.as_str();
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return None;
    }
    let var = format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_"));
    // httpoxy: a client's `Proxy:` header must never configure the child's HTTP proxy.
    (var != "HTTP_PROXY").then_some(var)
}

/// A header value usable in the environment: UTF-8 without NUL.
fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|s| !s.contains('\0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use hyper::{HeaderMap, Method};

    fn request(uri: &str, headers: &[(&str, &[u8])], body: &'static [u8]) -> JobRequest {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                hyper::header::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        JobRequest {
            method: Method::POST,
            uri: uri.parse().unwrap(),
            version: Version::HTTP_11,
            headers: map,
            body: Bytes::from_static(body),
            remote_addr: "192.0.2.7:41000".parse().unwrap(),
            local_addr: "127.0.0.1:8080".parse().unwrap(),
            client: Default::default(),
            upgrade: Default::default(),
            body_stream: Default::default(),
        }
    }

    #[test]
    fn meta_variables_describe_the_request() {
        let req = request(
            "/run?a=1&b=2",
            &[
                ("host", b"example.org:8080"),
                ("content-type", b"text/plain"),
                ("x-test", b"one"),
                ("x-test", b"two"),
            ],
            b"hello",
        );
        let v = cgi_vars("/run", &req);
        assert_eq!(v["GATEWAY_INTERFACE"], "CGI/1.1");
        assert_eq!(v["SERVER_PROTOCOL"], "HTTP/1.1");
        assert!(v["SERVER_SOFTWARE"].starts_with("fiddler_crab/"));
        assert_eq!(v["REQUEST_METHOD"], "POST");
        assert_eq!(v["SCRIPT_NAME"], "/run");
        assert_eq!(v["PATH_INFO"], "");
        assert_eq!(v["QUERY_STRING"], "a=1&b=2");
        assert_eq!(v["CONTENT_TYPE"], "text/plain");
        assert_eq!(v["CONTENT_LENGTH"], "5");
        assert_eq!(v["REMOTE_ADDR"], "192.0.2.7");
        assert_eq!(v["REMOTE_PORT"], "41000");
        assert_eq!(v["SERVER_NAME"], "example.org");
        assert_eq!(v["SERVER_PORT"], "8080");
        assert_eq!(v["HTTP_HOST"], "example.org:8080");
        assert_eq!(v["HTTP_X_TEST"], "one, two");
        assert!(!v.contains_key("HTTP_CONTENT_TYPE"));
        assert!(!v.contains_key("HTTP_CONTENT_LENGTH"));
    }

    #[test]
    fn empty_query_and_body() {
        let req = request("/run", &[], b"");
        let v = cgi_vars("/run", &req);
        assert_eq!(v["QUERY_STRING"], "");
        assert!(!v.contains_key("CONTENT_LENGTH"));
        assert!(!v.contains_key("CONTENT_TYPE"));
        assert_eq!(v["SERVER_NAME"], "127.0.0.1");
    }

    #[test]
    fn proxy_header_never_becomes_http_proxy() {
        let req = request("/run", &[("proxy", b"http://evil.example:3128")], b"");
        let v = cgi_vars("/run", &req);
        assert!(!v.contains_key("HTTP_PROXY"));
    }

    #[test]
    fn unsafe_header_names_and_values_are_skipped() {
        let req = request(
            "/run",
            &[
                ("x_forwarded_for", b"spoofed"),
                ("x-forwarded-for", b"198.51.100.1"),
                ("x-latin1", b"caf\xe9"),
                ("x-utf8", "café".as_bytes()),
            ],
            b"",
        );
        let v = cgi_vars("/run", &req);
        assert_eq!(v["HTTP_X_FORWARDED_FOR"], "198.51.100.1");
        assert!(!v.contains_key("HTTP_X_LATIN1"));
        assert_eq!(v["HTTP_X_UTF8"], "café");
    }

    #[test]
    fn server_name_strips_ports_and_keeps_ipv6_brackets() {
        assert_eq!(strip_port("example.org:80"), "example.org");
        assert_eq!(strip_port("example.org"), "example.org");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        let mut req = request("http://h2.example:8443/run", &[], b"");
        assert_eq!(cgi_vars("/run", &req)["SERVER_NAME"], "h2.example");
        req.uri = "/run".parse().unwrap();
        req.local_addr = "[::1]:8080".parse().unwrap();
        req.version = Version::HTTP_2;
        let v = cgi_vars("/run", &req);
        assert_eq!(v["SERVER_NAME"], "[::1]");
        assert_eq!(v["SERVER_PROTOCOL"], "HTTP/2.0");
    }

    #[test]
    fn path_info_is_what_follows_the_script_name() {
        assert_eq!(path_info("/run", "/run"), "");
        assert_eq!(path_info("/run", "/run/a/b"), "/a/b");
        assert_eq!(path_info("/llm/", "/llm/v1/chat"), "/v1/chat");
        assert_eq!(path_info("/run", "/runner"), "/runner");
    }

    #[test]
    fn configured_env_wins_and_server_env_is_allow_listed() {
        let cfg = ExecConfig {
            command: vec!["true".into()],
            cwd: None,
            output: config::ExecOutput::Raw,
            content_type: hyper::header::HeaderValue::from_static("text/plain"),
            timeout: std::time::Duration::from_secs(1),
            kill_grace: std::time::Duration::from_secs(1),
            max_output_bytes: 1,
            stream: false,
            stream_idle_timeout: std::time::Duration::from_secs(1),
            pass_env: vec![
                "CARGO_PKG_NAME".into(),
                "".into(),
                "A=B".into(),
                "N\0UL".into(),
            ],
            env: vec![("REQUEST_METHOD".into(), "OVERRIDDEN".into())],
        };
        let env = child_env("/run", &cfg, &request("/run", &[], b""));
        assert_eq!(env["REQUEST_METHOD"], "OVERRIDDEN");
        // Set by cargo for tests; passed only because it is listed in pass_env.
        assert_eq!(env["CARGO_PKG_NAME"], "exec");
        assert!(!env.contains_key("CARGO"));
        assert!(!env.contains_key("CARGO_MANIFEST_DIR"));
        if std::env::var_os("PATH").is_some() {
            assert!(env.contains_key("PATH"));
        }
    }
}
