//! Upstream endpoints (`[endpoint.upstream]`): the raw TOML table and its validated form.
//!
//! An upstream endpoint forwards each request to an HTTP/1.1 server that runs by itself (a
//! llama.cpp `llama-server`, a gunicorn or uvicorn app) over a kept-alive connection pool, TCP or
//! Unix socket. The documented reference of each key is `config/reference.toml`.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Longest Unix socket path accepted, in bytes (`sun_path` holds 107 and a NUL).
const MAX_UNIX_PATH: usize = 107;

/// Most servers one endpoint may list in `urls`.
pub const MAX_SERVERS: usize = 64;

/// An upstream server (`[endpoint.upstream]`), validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The servers requests go to (`url`, or each of `urls`): one or more, at most
    /// [`MAX_SERVERS`], no two with the same URL. With several, each request goes to the one with
    /// the fewest requests in flight among those usable.
    pub servers: Vec<UpstreamServer>,
    /// A path put before every forwarded path (`/base` of the URL, the same for every server;
    /// empty for none). Never ends in `/`.
    pub base_path: String,
    /// Time to establish a connection; past it the answer is `504`. Default 1 s.
    pub connect_timeout: Duration,
    /// Time for the whole exchange (connect, request, answer); past it the answer is `504` and
    /// the connection is closed. Default 60 s.
    pub timeout: Duration,
    /// Longest pause between two chunks of a streamed answer once the first came; past it the
    /// stream is cut. Default 30 s.
    pub stream_idle_timeout: Duration,
    /// Longest a passed-through WebSocket session may stay silent both ways; past it both
    /// connections are closed. Default 5 min.
    pub websocket_idle_timeout: Duration,
    /// A path polled with `GET` every `health_interval`; while it does not answer 2xx the
    /// endpoint refuses new requests as overflow at once and `/readyz` says not ready.
    pub health_path: Option<String>,
    /// Time between two health checks; also the longest one check may take. Default 1 s.
    pub health_interval: Duration,
    /// Longest a kept-alive connection may wait idle in the pool and still be used; an older one
    /// is closed instead. Below the upstream's own idle timeout, a request is never written into
    /// a connection the upstream is closing that moment, nor into one a firewall or NAT on the
    /// way dropped silently. Zero: a new connection per request. Default 4 s (uvicorn, Node and
    /// llama-server close theirs after 5 s).
    pub keepalive_timeout: Duration,
    /// Largest answer body taken whole from the upstream; past it the answer is `502`. Default
    /// 64 MiB.
    pub max_response_bytes: usize,
    /// On a prefix endpoint (`path` ending in `/`): forward the path without the endpoint's
    /// prefix (`/llm/v1/models` goes up as `/v1/models`). Default false: the path as requested.
    pub strip_prefix: bool,
    /// With several servers: a request header (lower case) whose value keeps the requests that
    /// carry it on the server the value's last request went to, while that server is usable and
    /// below its share of the endpoint's slots. Requests without it go by fewest in flight.
    pub affinity_header: Option<http::HeaderName>,
    /// Forward a request's body to the upstream as it arrives, once the request has its running
    /// slot, instead of reading it whole first (`max_body_bytes` and `body_read_timeout_ms` still
    /// bound it; a slow sender then holds the slot for up to `body_read_timeout_ms`). Default
    /// false: read whole before the request is admitted, as nginx's `proxy_request_buffering`.
    pub stream_request_body: bool,
    /// How `https://` servers are verified (only with at least one such server).
    pub tls: Option<UpstreamTls>,
    /// The `Host` each forwarded request carries.
    pub host_header: HostHeader,
}

/// How the `https://` servers of an upstream endpoint are verified.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTls {
    /// A PEM file of the certificate authorities trusted (`tls_ca_file`), instead of the system's
    /// trust store. Read when the endpoint starts (and by `check`); a reload reads it again.
    pub ca_file: Option<PathBuf>,
    /// The name every server's certificate must be valid for, also sent as SNI
    /// (`tls_server_name`), instead of each URL's host.
    pub server_name: Option<String>,
    /// A client certificate (chain, PEM) and its key, for servers that ask for one (mutual TLS):
    /// `tls_cert_file` and `tls_key_file`, both or neither.
    pub client_cert: Option<ClientCert>,
}

/// A client certificate chain and its private key, PEM files (read when the endpoint starts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The chain, leaf first (`tls_cert_file`).
    pub cert_file: PathBuf,
    /// Its private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) (`tls_key_file`).
    pub key_file: PathBuf,
}

/// The `Host` of a forwarded request (`host_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostHeader {
    /// The client's `Host`, as sent (the default: an app behind the proxy sees the name it was
    /// asked by, as behind HAProxy).
    #[default]
    Client,
    /// The server's own name: `tls_server_name` if set, else the authority of its URL
    /// (`host[:port]`), as nginx's default `$proxy_host`. For a server that routes by name, a
    /// virtual host on a shared address or a hosted API behind `https://`.
    Upstream,
}

/// One upstream server: where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamServer {
    /// Where it listens, as written (`http://host:port[/base]` or `unix:/path.sock`).
    pub url: String,
    /// Where to connect.
    pub address: UpstreamAddress,
    /// The key it was written under, relative to the table (`url`, or `urls[N]`), for messages.
    pub key: String,
    /// Its share of the requests against the others' (`weights[N]`, 1 to [`MAX_WEIGHT`]): by
    /// fewest in flight for its weight, equals taking turns in proportion. 1 without `weights`.
    pub weight: u32,
}

/// Largest weight a server may have in `weights`.
pub const MAX_WEIGHT: u32 = 100;

impl UpstreamConfig {
    /// The servers' URLs, joined by `, ` (for logs and the startup line).
    pub fn urls(&self) -> String {
        let urls: Vec<&str> = self.servers.iter().map(|s| s.url.as_str()).collect();
        urls.join(", ")
    }
}

/// Where an upstream listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddress {
    /// A TCP host (name or IP address) and port.
    Tcp {
        /// Host name or address (an IPv6 address without its brackets).
        host: String,
        /// Port (80 if the URL names none, 443 with `https://`).
        port: u16,
        /// True for an `https://` URL: the connection is TLS (HTTP/1.1 inside, by ALPN).
        tls: bool,
    },
    /// A Unix socket path.
    Unix(PathBuf),
}

/// The `[endpoint.upstream]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub(crate) url: Option<String>,
    pub(crate) urls: Option<Vec<String>>,
    pub(crate) weights: Option<Vec<u32>>,
    #[serde(default = "default_connect_timeout_ms")]
    pub(crate) connect_timeout_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub(crate) timeout_ms: u64,
    #[serde(default = "default_stream_idle_timeout_ms")]
    pub(crate) stream_idle_timeout_ms: u64,
    #[serde(default = "default_websocket_idle_timeout_ms")]
    pub(crate) websocket_idle_timeout_ms: u64,
    pub(crate) health_path: Option<String>,
    #[serde(default = "default_health_interval_ms")]
    pub(crate) health_interval_ms: u64,
    #[serde(default = "default_keepalive_timeout_ms")]
    pub(crate) keepalive_timeout_ms: u64,
    #[serde(default = "default_max_response_bytes")]
    pub(crate) max_response_bytes: usize,
    #[serde(default)]
    pub(crate) strip_prefix: bool,
    pub(crate) affinity_header: Option<String>,
    #[serde(default)]
    pub(crate) stream_request_body: bool,
    pub(crate) tls_ca_file: Option<PathBuf>,
    pub(crate) tls_server_name: Option<String>,
    pub(crate) tls_cert_file: Option<PathBuf>,
    pub(crate) tls_key_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) host_header: RawHostHeader,
}

/// `host_header` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawHostHeader {
    #[default]
    Client,
    Upstream,
}

fn default_connect_timeout_ms() -> u64 {
    1_000
}
fn default_timeout_ms() -> u64 {
    60_000
}
fn default_stream_idle_timeout_ms() -> u64 {
    30_000
}
fn default_websocket_idle_timeout_ms() -> u64 {
    300_000
}
fn default_health_interval_ms() -> u64 {
    1_000
}
fn default_keepalive_timeout_ms() -> u64 {
    4_000
}
fn default_max_response_bytes() -> usize {
    64 * 1024 * 1024
}

/// A problem with one key of the table: the key (relative to the table) and what is wrong.
pub(crate) type Problem = (&'static str, String);

/// The servers of `url` or `urls` (exactly one of the two), each parsed, and their base path (the
/// same for all: every server takes the same paths); a problem names its key (`url`, `urls`, or
/// `urls[N]`).
fn servers(
    url: Option<String>,
    urls: Option<Vec<String>>,
) -> Result<(Vec<UpstreamServer>, String), (String, String)> {
    let listed: Vec<(String, String)> = match (url, urls) {
        (Some(url), None) => vec![("url".to_string(), url)],
        (None, Some(urls)) => {
            if urls.is_empty() || urls.len() > MAX_SERVERS {
                return Err((
                    "urls".into(),
                    format!("lists {} servers: give 1 to {MAX_SERVERS}", urls.len()),
                ));
            }
            urls.into_iter()
                .enumerate()
                .map(|(i, url)| (format!("urls[{i}]"), url))
                .collect()
        }
        (Some(_), Some(_)) => {
            return Err(("urls".into(), "give `url` or `urls`, not both".into()));
        }
        (None, None) => {
            return Err((
                "url".into(),
                "is missing: give `url = \"http://host:port\"` (or `urls = [...]` for several servers)"
                    .into(),
            ));
        }
    };
    let mut servers: Vec<UpstreamServer> = Vec::with_capacity(listed.len());
    let mut base: Option<String> = None;
    for (key, url) in listed {
        let (address, base_path) = parse_url(&url).map_err(|p| (key.clone(), p))?;
        if servers.iter().any(|s| s.url == url) {
            return Err((key, format!("`{}` is listed twice", crate::quote(&url))));
        }
        match &base {
            Some(first) if *first != base_path => {
                return Err((
                    key,
                    format!(
                        "`{}` has another base path than urls[0]: every server takes the same paths",
                        crate::quote(&url)
                    ),
                ));
            }
            Some(_) => {}
            None => base = Some(base_path),
        }
        servers.push(UpstreamServer {
            url,
            address,
            key,
            weight: 1,
        });
    }
    Ok((servers, base.unwrap_or_default()))
}

/// Give each of `urls`' servers its weight: one per server, in the same order, each 1 to
/// [`MAX_WEIGHT`]; a problem names `weights` or `weights[N]`.
fn weigh(servers: &mut [UpstreamServer], weights: &[u32]) -> Result<(), (String, String)> {
    if servers.first().is_some_and(|s| s.key == "url") {
        return Err((
            "weights".into(),
            "needs several servers (`urls` with two or more)".into(),
        ));
    }
    if weights.len() != servers.len() {
        return Err((
            "weights".into(),
            format!(
                "gives {} weights for {} servers: give one per server in `urls`, in its order",
                weights.len(),
                servers.len()
            ),
        ));
    }
    for (i, (server, &weight)) in servers.iter_mut().zip(weights).enumerate() {
        if !(1..=MAX_WEIGHT).contains(&weight) {
            return Err((
                format!("weights[{i}]"),
                format!("{weight} is out of range (1 to {MAX_WEIGHT})"),
            ));
        }
        server.weight = weight;
    }
    Ok(())
}

/// The parts of a valid upstream URL: address and base path.
pub fn parse_url(url: &str) -> Result<(UpstreamAddress, String), String> {
    let bad = |why: &str| {
        format!(
            "`{}` {why}: write http://host:port[/base], https://host:port[/base] or unix:/path/to.sock",
            crate::quote(url)
        )
    };
    if let Some(path) = url.strip_prefix("unix:") {
        if !path.starts_with('/') {
            return Err(bad("needs an absolute socket path"));
        }
        if path.len() > MAX_UNIX_PATH || path.contains('\0') {
            return Err(bad(&format!(
                "is not a usable socket path (at most {MAX_UNIX_PATH} bytes)"
            )));
        }
        return Ok((UpstreamAddress::Unix(PathBuf::from(path)), String::new()));
    }
    let (rest, tls) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (rest, true)
    } else {
        return Err(bad("is not an http://, https:// or unix: URL"));
    };
    let uri: http::Uri = url.parse().map_err(|_| bad("is not a valid URL"))?;
    let Some(authority) = uri.authority() else {
        return Err(bad("names no host"));
    };
    if authority.as_str().contains('@') {
        return Err(bad("may not carry credentials"));
    }
    if uri.query().is_some() || rest.contains('#') {
        return Err(bad("may not carry a query or fragment"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("names no host"));
    }
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let base = uri.path().trim_end_matches('/').to_string();
    Ok((
        UpstreamAddress::Tcp {
            host: host.to_string(),
            port,
            tls,
        },
        base,
    ))
}

impl RawUpstream {
    /// Validate the table (its durations against `ranges`: connect, whole exchange, stream idle,
    /// WebSocket idle, health interval, kept-alive idle; its body limit against `max_bytes`); an
    /// error names the offending key relative to it.
    pub(crate) fn validate(
        mut self,
        ranges: [(u64, u64); 6],
        max_bytes: (u64, u64),
    ) -> Result<UpstreamConfig, (String, String)> {
        let (mut servers, base_path) = servers(self.url.take(), self.urls.take())?;
        if let Some(weights) = self.weights.take() {
            weigh(&mut servers, &weights)?;
        }
        self.rest(servers, base_path, ranges, max_bytes)
            .map_err(|(key, problem)| (key.to_string(), problem))
    }

    fn rest(
        self,
        servers: Vec<UpstreamServer>,
        base_path: String,
        ranges: [(u64, u64); 6],
        max_bytes: (u64, u64),
    ) -> Result<UpstreamConfig, Problem> {
        if let Some(path) = &self.health_path {
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err((
                    "health_path",
                    format!(
                        "`{}` must start with `/` and hold no spaces",
                        crate::quote(path)
                    ),
                ));
            }
        }
        let affinity_header = match &self.affinity_header {
            None => None,
            Some(_) if servers.len() < 2 => {
                return Err((
                    "affinity_header",
                    "needs several servers (`urls` with two or more)".to_string(),
                ))
            }
            Some(name) => Some(http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                (
                    "affinity_header",
                    format!("`{}` is not a header name", crate::quote(name)),
                )
            })?),
        };
        let tls = self.tls(&servers)?;
        let host_header = match self.host_header {
            RawHostHeader::Client => HostHeader::Client,
            RawHostHeader::Upstream => HostHeader::Upstream,
        };
        let [connect, whole, idle, websocket_idle, health, keepalive] = ranges;
        Ok(UpstreamConfig {
            servers,
            base_path,
            connect_timeout: millis("connect_timeout_ms", self.connect_timeout_ms, connect)?,
            timeout: millis("timeout_ms", self.timeout_ms, whole)?,
            stream_idle_timeout: millis(
                "stream_idle_timeout_ms",
                self.stream_idle_timeout_ms,
                idle,
            )?,
            websocket_idle_timeout: millis(
                "websocket_idle_timeout_ms",
                self.websocket_idle_timeout_ms,
                websocket_idle,
            )?,
            health_path: self.health_path,
            health_interval: millis("health_interval_ms", self.health_interval_ms, health)?,
            keepalive_timeout: millis(
                "keepalive_timeout_ms",
                self.keepalive_timeout_ms,
                keepalive,
            )?,
            max_response_bytes: in_range(
                "max_response_bytes",
                self.max_response_bytes as u64,
                max_bytes,
            )? as usize,
            strip_prefix: self.strip_prefix,
            affinity_header,
            stream_request_body: self.stream_request_body,
            tls,
            host_header,
        })
    }

    /// The TLS settings, if a server is `https://`; `tls_ca_file` and `tls_server_name` are
    /// refused without one (they would do nothing), and the server name must be a DNS name or
    /// an IP address, as rustls takes it.
    fn tls(&self, servers: &[UpstreamServer]) -> Result<Option<UpstreamTls>, Problem> {
        let any = servers
            .iter()
            .any(|s| matches!(s.address, UpstreamAddress::Tcp { tls: true, .. }));
        if !any {
            let set = [
                ("tls_ca_file", self.tls_ca_file.is_some()),
                ("tls_server_name", self.tls_server_name.is_some()),
                ("tls_cert_file", self.tls_cert_file.is_some()),
                ("tls_key_file", self.tls_key_file.is_some()),
            ];
            if let Some((key, _)) = set.into_iter().find(|(_, set)| *set) {
                return Err((
                    key,
                    "has no effect: no server is an https:// URL".to_string(),
                ));
            }
            return Ok(None);
        }
        let checkable = |name: &str| rustls_pki_types::ServerName::try_from(name).is_ok();
        match &self.tls_server_name {
            Some(name) if !checkable(name) => {
                return Err((
                    "tls_server_name",
                    format!(
                        "`{}` is not a DNS name or an IP address",
                        crate::quote(name)
                    ),
                ));
            }
            Some(_) => {}
            None => {
                for server in servers {
                    if let UpstreamAddress::Tcp {
                        host, tls: true, ..
                    } = &server.address
                    {
                        if !checkable(host) {
                            return Err((
                                "tls_server_name",
                                format!(
                                    "is needed: the host `{}` of {} is not a name a certificate \
                                     can be checked against",
                                    crate::quote(host),
                                    server.key
                                ),
                            ));
                        }
                    }
                }
            }
        }
        let files = [
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ];
        for (key, file) in files {
            if file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
                return Err((key, "is empty: give a PEM file's path".to_string()));
            }
        }
        let client_cert = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert_file), Some(key_file)) => Some(ClientCert {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err((
                    "tls_key_file",
                    "is missing: tls_cert_file needs its key".to_string(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "tls_cert_file",
                    "is missing: tls_key_file needs its certificate".to_string(),
                ))
            }
        };
        Ok(Some(UpstreamTls {
            ca_file: self.tls_ca_file.clone(),
            server_name: self.tls_server_name.clone(),
            client_cert,
        }))
    }
}

fn in_range(key: &'static str, value: u64, (min, max): (u64, u64)) -> Result<u64, Problem> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err((key, format!("{value} is out of range ({min} to {max})")))
    }
}

fn millis(key: &'static str, ms: u64, range: (u64, u64)) -> Result<Duration, Problem> {
    in_range(key, ms, range).map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::{Config, HandlerConfig};

    fn endpoint(path: &str, upstream: &str) -> String {
        format!("[[endpoint]]\npath = \"{path}\"\n[endpoint.upstream]\n{upstream}\n")
    }

    #[test]
    fn an_upstream_table_gets_every_default() {
        let c = Config::from_toml(&endpoint("/u", "url = \"http://127.0.0.1:8081\""), "t.toml")
            .unwrap();
        let HandlerConfig::Upstream(u) = &c.endpoints[0].handler else {
            panic!("not an upstream endpoint: {:?}", c.endpoints[0].handler);
        };
        assert_eq!(u.servers.len(), 1);
        assert_eq!(
            u.servers[0].address,
            UpstreamAddress::Tcp {
                host: "127.0.0.1".into(),
                port: 8081,
                tls: false
            }
        );
        assert_eq!(u.base_path, "");
        assert_eq!(u.servers[0].key, "url");
        assert_eq!(u.connect_timeout, Duration::from_secs(1));
        assert_eq!(u.timeout, Duration::from_secs(60));
        assert_eq!(u.stream_idle_timeout, Duration::from_secs(30));
        assert_eq!(u.websocket_idle_timeout, Duration::from_secs(300));
        assert_eq!(u.health_interval, Duration::from_secs(1));
        assert_eq!(u.keepalive_timeout, Duration::from_secs(4));
        assert_eq!(u.max_response_bytes, 64 * 1024 * 1024);
        assert!(u.health_path.is_none() && !u.strip_prefix);
        assert!(!c.endpoints[0].is_prefix());
    }

    #[test]
    fn urls_give_their_address_and_base_path() {
        let cases = [
            ("http://localhost/api/", ("localhost", 80, false), "/api"),
            ("http://[::1]:9000", ("::1", 9000, false), ""),
            ("http://h:1/a/b", ("h", 1, false), "/a/b"),
            ("https://api.example/v1", ("api.example", 443, true), "/v1"),
            ("https://[::1]:8443", ("::1", 8443, true), ""),
        ];
        for (url, (host, port, tls), base) in cases {
            let (address, b) = parse_url(url).unwrap();
            assert_eq!(
                address,
                UpstreamAddress::Tcp {
                    host: host.into(),
                    port,
                    tls
                },
                "{url}"
            );
            assert_eq!(b, base, "{url}");
        }
        let (address, _) = parse_url("unix:/run/llama.sock").unwrap();
        assert_eq!(address, UpstreamAddress::Unix("/run/llama.sock".into()));
    }

    #[test]
    fn bad_upstream_keys_are_named() {
        let cases = [
            ("url = \"https://\"", "endpoint[0].upstream.url"),
            ("url = \"ftp://x\"", "endpoint[0].upstream.url"),
            ("url = \"unix:relative.sock\"", "endpoint[0].upstream.url"),
            ("url = \"http://u:p@h:1\"", "endpoint[0].upstream.url"),
            ("url = \"http://h:1/?q=1\"", "endpoint[0].upstream.url"),
            (
                "url = \"http://h:1\"\nhealth_path = \"health\"",
                "endpoint[0].upstream.health_path",
            ),
            (
                "url = \"http://h:1\"\ntimeout_ms = 0",
                "endpoint[0].upstream.timeout_ms",
            ),
            (
                "url = \"http://h:1\"\nconnect_timeout_ms = 0",
                "endpoint[0].upstream.connect_timeout_ms",
            ),
            (
                "url = \"http://h:1\"\nmax_response_bytes = 0",
                "endpoint[0].upstream.max_response_bytes",
            ),
            (
                "url = \"http://h:1\"\nkeepalive_timeout_ms = 3600001",
                "endpoint[0].upstream.keepalive_timeout_ms",
            ),
            (
                "url = \"http://h:1\"\nstrip_prefix = true",
                "endpoint[0].upstream.strip_prefix",
            ),
            (
                "url = \"http://h:1\"\nretries = 3",
                "endpoint[0].upstream.retries",
            ),
            ("health_path = \"/h\"", "endpoint[0].upstream.url"),
            (
                "url = \"http://h:1\"\nurls = [\"http://h:2\"]",
                "endpoint[0].upstream.urls",
            ),
            ("urls = []", "endpoint[0].upstream.urls"),
            (
                "urls = [\"http://h:1\", \"httpx://h:2\"]",
                "endpoint[0].upstream.urls[1]",
            ),
            (
                "url = \"http://h:1\"\ntls_ca_file = \"/ca.pem\"",
                "endpoint[0].upstream.tls_ca_file",
            ),
            (
                "url = \"http://h:1\"\ntls_server_name = \"h\"",
                "endpoint[0].upstream.tls_server_name",
            ),
            (
                "url = \"https://h:1\"\ntls_server_name = \"not a name\"",
                "endpoint[0].upstream.tls_server_name",
            ),
            (
                "url = \"https://h:1\"\ntls_ca_file = \"\"",
                "endpoint[0].upstream.tls_ca_file",
            ),
            (
                "url = \"http://h:1\"\nhost_header = \"server\"",
                "endpoint[0].upstream.host_header",
            ),
            (
                "url = \"http://h:1\"\nweights = [1]",
                "endpoint[0].upstream.weights",
            ),
            (
                "urls = [\"http://h:1\", \"http://h:2\"]\nweights = [1]",
                "endpoint[0].upstream.weights",
            ),
            (
                "urls = [\"http://h:1\", \"http://h:2\"]\nweights = [1, 0]",
                "endpoint[0].upstream.weights[1]",
            ),
            (
                "urls = [\"http://h:1\", \"http://h:2\"]\nweights = [101, 1]",
                "endpoint[0].upstream.weights[0]",
            ),
            (
                "url = \"https://h:1\"\ntls_cert_file = \"/c.pem\"",
                "endpoint[0].upstream.tls_key_file",
            ),
            (
                "url = \"https://h:1\"\ntls_key_file = \"/c.key\"",
                "endpoint[0].upstream.tls_cert_file",
            ),
            (
                "url = \"http://h:1\"\ntls_cert_file = \"/c.pem\"\ntls_key_file = \"/c.key\"",
                "endpoint[0].upstream.tls_cert_file",
            ),
            (
                "urls = [\"http://h:1\", \"http://h:2\", \"http://h:1\"]",
                "endpoint[0].upstream.urls[2]",
            ),
            (
                "urls = [\"http://h:1/v1\", \"http://h:2/v2\"]",
                "endpoint[0].upstream.urls[1]",
            ),
            (
                "url = \"http://h:1\"\naffinity_header = \"x-session\"",
                "endpoint[0].upstream.affinity_header",
            ),
            (
                "urls = [\"http://h:1\", \"http://h:2\"]\naffinity_header = \"x session\"",
                "endpoint[0].upstream.affinity_header",
            ),
        ];
        for (table, key) in cases {
            let e = Config::from_toml(&endpoint("/u", table), "t.toml").unwrap_err();
            assert_eq!(e.key, key, "{table}: {e}");
        }
    }

    #[test]
    fn https_servers_take_tls_settings_and_host_header_is_read() {
        let upstream = |table: &str| {
            let c = Config::from_toml(&endpoint("/u", table), "t.toml").unwrap();
            let HandlerConfig::Upstream(u) = &c.endpoints[0].handler else {
                panic!("not an upstream endpoint");
            };
            u.clone()
        };
        let u = upstream("url = \"https://api.example\"");
        assert_eq!(u.tls, Some(UpstreamTls::default()));
        assert_eq!(u.host_header, HostHeader::Client);
        let u = upstream(
            "urls = [\"https://10.0.0.1\", \"http://10.0.0.2:8080\"]\n\
             tls_ca_file = \"/etc/ca.pem\"\ntls_server_name = \"llama.internal\"\n\
             host_header = \"upstream\"",
        );
        assert_eq!(
            u.tls,
            Some(UpstreamTls {
                ca_file: Some("/etc/ca.pem".into()),
                server_name: Some("llama.internal".into()),
                client_cert: None,
            })
        );
        assert_eq!(u.host_header, HostHeader::Upstream);
        let u =
            upstream("url = \"https://h\"\ntls_cert_file = \"/c.pem\"\ntls_key_file = \"/c.key\"");
        assert_eq!(
            u.tls.and_then(|t| t.client_cert),
            Some(ClientCert {
                cert_file: "/c.pem".into(),
                key_file: "/c.key".into()
            })
        );
        let u = upstream("url = \"http://h:1\"\nhost_header = \"upstream\"");
        assert_eq!((u.tls, u.host_header), (None, HostHeader::Upstream));
        // A host no certificate can name needs tls_server_name.
        let e =
            Config::from_toml(&endpoint("/u", "url = \"https://-bad-:1\""), "t.toml").unwrap_err();
        assert_eq!(e.key, "endpoint[0].upstream.tls_server_name", "{e}");
        assert!(e.problem.contains("`-bad-` of url"), "{e}");
        let named = "url = \"https://-bad-:1\"\ntls_server_name = \"api.example\"";
        assert!(Config::from_toml(&endpoint("/u", named), "t.toml").is_ok());
    }

    #[test]
    fn urls_list_several_servers_that_share_a_base_path() {
        let c = Config::from_toml(
            &endpoint(
                "/u",
                "urls = [\"http://127.0.0.1:8081/v1\", \"http://[::1]:8082/v1/\"]",
            ),
            "t.toml",
        )
        .unwrap();
        let HandlerConfig::Upstream(u) = &c.endpoints[0].handler else {
            panic!("not an upstream endpoint: {:?}", c.endpoints[0].handler);
        };
        assert_eq!(u.servers.len(), 2);
        assert_eq!(u.base_path, "/v1");
        assert_eq!(
            u.servers[1].address,
            UpstreamAddress::Tcp {
                host: "::1".into(),
                port: 8082,
                tls: false
            }
        );
        assert_eq!(u.servers[1].key, "urls[1]");
        assert_eq!((u.servers[0].weight, u.servers[1].weight), (1, 1));
        assert_eq!(u.urls(), "http://127.0.0.1:8081/v1, http://[::1]:8082/v1/");
        assert!(u.affinity_header.is_none());
        let c = Config::from_toml(
            &endpoint(
                "/u",
                "urls = [\"http://h:1\", \"http://h:2\"]\naffinity_header = \"X-Session-Id\"",
            ),
            "t.toml",
        )
        .unwrap();
        let HandlerConfig::Upstream(u) = &c.endpoints[0].handler else {
            panic!("not an upstream endpoint");
        };
        assert_eq!(u.affinity_header.as_ref().unwrap(), "x-session-id");
        let c = Config::from_toml(
            &endpoint(
                "/u",
                "urls = [\"http://h:1\", \"http://h:2\"]\nweights = [3, 1]",
            ),
            "t.toml",
        )
        .unwrap();
        let HandlerConfig::Upstream(u) = &c.endpoints[0].handler else {
            panic!("not an upstream endpoint");
        };
        assert_eq!((u.servers[0].weight, u.servers[1].weight), (3, 1));
    }

    #[test]
    fn a_trailing_slash_makes_an_upstream_endpoint_a_prefix() {
        let c = Config::from_toml(
            &endpoint("/llm/", "url = \"unix:/tmp/x.sock\"\nstrip_prefix = true"),
            "t.toml",
        )
        .unwrap();
        assert!(c.endpoints[0].is_prefix());
        let builtin = "[[endpoint]]\npath = \"/b/\"\nbuiltin = \"ping\"\n";
        let c = Config::from_toml(builtin, "t.toml").unwrap();
        assert!(!c.endpoints[0].is_prefix());
    }

    #[test]
    fn upstream_is_exclusive_with_other_handlers() {
        let text = "[[endpoint]]\npath = \"/u\"\nbuiltin = \"ping\"\n[endpoint.upstream]\nurl = \"http://h:1\"\n";
        let e = Config::from_toml(text, "t.toml").unwrap_err();
        assert_eq!(e.key, "endpoint[0]");
        assert!(e.problem.contains("choose one"), "{e}");
    }
}
