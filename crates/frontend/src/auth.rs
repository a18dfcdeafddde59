//! Authentication: bearer tokens from a file, checked by the router before admission, so a request
//! without valid credentials never takes a queue slot.
//!
//! Tokens are kept only as SHA-256 digests, and a candidate is compared by digest with every
//! token, in time that depends on neither where the bytes differ nor the lengths involved. ring's
//! `constant_time::verify_slices_are_equal` is deprecated ("no promises regarding side
//! channels"), so the comparison of two digests is an OR of XORs here.

use super::Body;
use common::handler::text_response;
use config::AuthConfig;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use ring::digest::{digest, SHA256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Tokens per file at most: a token file is a short list of clients, not a user database.
const MAX_TOKENS: usize = 10_000;

/// A SHA-256 digest.
type Digest = [u8; 32];

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no token, or more than [`MAX_TOKENS`].
    #[error("{}: {problem}", file.display())]
    Tokens {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// The credentials one endpoint (or the server's own paths) asks for, as read from its token
/// file. Immutable: a reload reads the file again into a new guard.
#[derive(Debug)]
pub struct Guard {
    tokens: Vec<Digest>,
}

impl Guard {
    /// Read `cfg`'s token file: one token per line, surrounding whitespace trimmed; blank lines
    /// and lines starting with `#` ignored.
    pub fn load(cfg: &AuthConfig) -> Result<Guard, AuthError> {
        let file = &cfg.bearer_tokens_file;
        let text = std::fs::read_to_string(file).map_err(|source| AuthError::Read {
            file: file.clone(),
            source,
        })?;
        let tokens: Vec<Digest> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|t| sha256(t.as_bytes()))
            .collect();
        let problem = match tokens.len() {
            0 => "holds no token (one per line; `#` starts a comment)".to_string(),
            n if n > MAX_TOKENS => format!("holds {n} tokens, more than {MAX_TOKENS}"),
            _ => return Ok(Guard { tokens }),
        };
        Err(AuthError::Tokens {
            file: file.clone(),
            problem,
        })
    }

    /// True if `headers` carry `Authorization: Bearer TOKEN` with one of the guard's tokens.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(token) = headers
            .get(AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()))
        else {
            return false;
        };
        let candidate = sha256(token);
        // Every token is compared: the time taken does not say which one matched.
        self.tokens
            .iter()
            .fold(false, |found, t| same_digest(t, &candidate) | found)
    }
}

/// The guards of a routing table: by endpoint path, and for the server's own paths.
#[derive(Debug, Default, Clone)]
pub struct Guards {
    /// Each guarded endpoint's, by path.
    pub endpoints: HashMap<String, Arc<Guard>>,
    /// The server's own paths' (`[server] protect_admin = true`).
    pub admin: Option<Arc<Guard>>,
}

/// The token of an `Authorization: Bearer TOKEN` value (the scheme is case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn sha256(bytes: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// Equality of two digests in time independent of their contents.
fn same_digest(a: &Digest, b: &Digest) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// `401 Unauthorized` asking for a bearer token.
pub(super) fn unauthorized() -> Response<Body> {
    let mut resp = text_response(StatusCode::UNAUTHORIZED, "credentials required");
    resp.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"fiddler_crab\""),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(text: &str) -> Result<Guard, AuthError> {
        let file = std::env::temp_dir().join(format!(
            "fiddler-crab-auth-{}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&file, text).unwrap();
        let g = Guard::load(&AuthConfig {
            bearer_tokens_file: file.clone(),
        });
        let _ = std::fs::remove_file(file);
        g
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn tokens_are_read_one_per_line_without_comments_or_blanks() {
        let g = guard("# clients\n\n  alpha  \nbeta\n#gamma\n").unwrap();
        assert!(g.allows(&headers("Bearer alpha")));
        assert!(g.allows(&headers("bearer beta")));
        for refused in [
            "Bearer gamma",
            "Bearer #gamma",
            "Bearer alph",
            "Bearer ",
            "alpha",
            "Basic alpha",
        ] {
            assert!(!g.allows(&headers(refused)), "{refused}");
        }
        assert!(!g.allows(&HeaderMap::new()));
    }

    #[test]
    fn a_file_without_tokens_is_refused() {
        assert!(matches!(
            guard("# only a comment\n\n"),
            Err(AuthError::Tokens { .. })
        ));
    }
}
