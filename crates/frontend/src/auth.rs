//! Authentication: bearer tokens and Basic-auth users from files, checked by the router before
//! admission, so a request without valid credentials never takes a queue slot.
//!
//! Tokens and `user:password` pairs are kept only as SHA-256 digests, and a candidate is compared
//! by digest with every entry, in time that depends on neither where the bytes differ nor the
//! lengths involved. ring's `constant_time::verify_slices_are_equal` is deprecated ("no promises
//! regarding side channels"), so the comparison of two digests is an OR of XORs here.
//!
//! The users file holds plaintext passwords (keep it `0600`), not password hashes: the check runs
//! on the accept path before admission, and a slow hash (bcrypt, argon2: tens of milliseconds of
//! CPU by design) would let a flood of wrong passwords buy that CPU per request, which is what
//! checking before admission is there to prevent. A fast hash of a human-chosen password would
//! protect little against whoever can read the file.

use super::Body;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::handler::text_response;
use config::AuthConfig;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};
use ring::digest::{digest, SHA256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Entries per file at most: a token or users file is a short list of clients, not a user
/// database.
const MAX_ENTRIES: usize = 10_000;

/// A SHA-256 digest.
type Digest = [u8; 32];

/// A token or users file that cannot be used. Never quotes a line of the file: lines hold secrets.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        /// The config key that names the file (`bearer_tokens_file`, `basic_users_file`).
        key: &'static str,
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no entry, more than `MAX_ENTRIES`, or a malformed line.
    #[error("{}: {problem}", file.display())]
    Entries {
        /// The config key that names the file.
        key: &'static str,
        /// The file.
        file: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

impl AuthError {
    /// The key under the auth table that names the file at fault.
    pub fn key(&self) -> &'static str {
        match self {
            AuthError::Read { key, .. } | AuthError::Entries { key, .. } => key,
        }
    }
}

/// The credentials one endpoint (or the server's own paths) asks for, as read from its files.
/// Immutable: a reload reads the files again into a new guard.
#[derive(Debug)]
pub struct Guard {
    /// Digests of the bearer tokens; `None` when no tokens file is configured.
    tokens: Option<Vec<Digest>>,
    /// Digests of the `user:password` lines; `None` when no users file is configured.
    users: Option<Vec<Digest>>,
    /// The `WWW-Authenticate` values of a `401`: one per scheme offered.
    challenges: Vec<HeaderValue>,
}

impl Guard {
    /// Read `cfg`'s files. Tokens: one per line, surrounding whitespace trimmed. Users: one
    /// `user:password` per line, surrounding whitespace trimmed, the user not empty and the
    /// password everything after the first `:` (not empty). In both, blank lines and lines
    /// starting with `#` are ignored.
    pub fn load(cfg: &AuthConfig) -> Result<Guard, AuthError> {
        let tokens = cfg
            .bearer_tokens_file
            .as_deref()
            .map(load_tokens)
            .transpose()?;
        let users = cfg
            .basic_users_file
            .as_deref()
            .map(load_users)
            .transpose()?;
        let mut challenges = Vec::new();
        for (offered, scheme) in [(tokens.is_some(), "Bearer"), (users.is_some(), "Basic")] {
            if offered {
                // The realm is validated as printable ASCII without quotes or backslashes.
                let value = format!("{scheme} realm=\"{}\"", cfg.realm);
                if let Ok(value) = HeaderValue::from_str(&value) {
                    challenges.push(value);
                }
            }
        }
        Ok(Guard {
            tokens,
            users,
            challenges,
        })
    }

    /// True if `headers` carry `Authorization: Bearer TOKEN` with one of the guard's tokens, or
    /// `Authorization: Basic CREDENTIALS` with one of its users and that user's password.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(AUTHORIZATION).map(HeaderValue::as_bytes) else {
            return false;
        };
        if let (Some(tokens), Some(token)) = (&self.tokens, credentials(value, b"bearer ")) {
            return any_equal(tokens, &sha256(token));
        }
        if let (Some(users), Some(encoded)) = (&self.users, credentials(value, b"basic ")) {
            // RFC 7617: base64 of `user:password`, compared as bytes with the file's line.
            return STANDARD
                .decode(encoded)
                .is_ok_and(|pair| any_equal(users, &sha256(&pair)));
        }
        false
    }

    /// `401 Unauthorized` with one `WWW-Authenticate` challenge per scheme the guard offers.
    pub(super) fn unauthorized(&self) -> Response<Body> {
        let mut resp = text_response(StatusCode::UNAUTHORIZED, "credentials required");
        for challenge in &self.challenges {
            resp.headers_mut()
                .append(WWW_AUTHENTICATE, challenge.clone());
        }
        resp
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

/// The lines of `file` that are not blank or comments, trimmed, with their 1-based numbers.
fn read_entries(key: &'static str, file: &Path) -> Result<Vec<(usize, String)>, AuthError> {
    let text = std::fs::read_to_string(file).map_err(|source| AuthError::Read {
        key,
        file: file.to_path_buf(),
        source,
    })?;
    let entries: Vec<(usize, String)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(n, l)| (n, l.to_string()))
        .collect();
    let problem = match entries.len() {
        0 => "holds no entry (one per line; `#` starts a comment)".to_string(),
        n if n > MAX_ENTRIES => format!("holds {n} entries, more than {MAX_ENTRIES}"),
        _ => return Ok(entries),
    };
    Err(AuthError::Entries {
        key,
        file: file.to_path_buf(),
        problem,
    })
}

fn load_tokens(file: &Path) -> Result<Vec<Digest>, AuthError> {
    Ok(read_entries("bearer_tokens_file", file)?
        .iter()
        .map(|(_, t)| sha256(t.as_bytes()))
        .collect())
}

fn load_users(file: &Path) -> Result<Vec<Digest>, AuthError> {
    let key = "basic_users_file";
    let bad = |problem: String| AuthError::Entries {
        key,
        file: file.to_path_buf(),
        problem,
    };
    let mut first_line_of: HashMap<String, usize> = HashMap::new();
    let mut users = Vec::new();
    for (n, line) in read_entries(key, file)? {
        // The problem names the line, never its content: it holds a password.
        let Some((user, password)) = line.split_once(':') else {
            return Err(bad(format!("line {n}: expected `user:password`")));
        };
        if user.is_empty() || password.is_empty() {
            return Err(bad(format!(
                "line {n}: the user and the password must not be empty"
            )));
        }
        if let Some(first) = first_line_of.insert(user.to_string(), n) {
            return Err(bad(format!("line {n}: repeats the user of line {first}")));
        }
        users.push(sha256(line.as_bytes()));
    }
    Ok(users)
}

/// The credentials of an `Authorization` value for `scheme` (lowercase, with its trailing space;
/// the scheme is matched case-insensitively).
fn credentials<'a>(value: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    let (found, rest) = value.split_at_checked(scheme.len())?;
    if !found.eq_ignore_ascii_case(scheme) {
        return None;
    }
    let credentials = rest.trim_ascii();
    (!credentials.is_empty()).then_some(credentials)
}

fn sha256(bytes: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// True if `candidate` equals one of `known`. Every entry is compared: the time taken does not
/// say which one matched.
fn any_equal(known: &[Digest], candidate: &Digest) -> bool {
    known
        .iter()
        .fold(false, |found, k| same_digest(k, candidate) | found)
}

/// Equality of two digests in time independent of their contents.
fn same_digest(a: &Digest, b: &Digest) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static FILES: AtomicUsize = AtomicUsize::new(0);

    fn file(text: &str) -> PathBuf {
        let file = std::env::temp_dir().join(format!(
            "fiddler-crab-auth-{}-{}",
            std::process::id(),
            FILES.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&file, text).unwrap();
        file
    }

    fn guard(tokens: Option<&str>, users: Option<&str>) -> Result<Guard, AuthError> {
        let tokens = tokens.map(file);
        let users = users.map(file);
        let g = Guard::load(&AuthConfig {
            bearer_tokens_file: tokens.clone(),
            basic_users_file: users.clone(),
            realm: "zone".to_string(),
        });
        for f in tokens.iter().chain(&users) {
            let _ = std::fs::remove_file(f);
        }
        g
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    fn basic(pair: &str) -> HeaderMap {
        headers(&format!("Basic {}", STANDARD.encode(pair)))
    }

    fn problem(result: Result<Guard, AuthError>) -> String {
        match result {
            Err(AuthError::Entries { problem, .. }) => problem,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tokens_are_read_one_per_line_without_comments_or_blanks() {
        let g = guard(Some("# clients\n\n  alpha  \nbeta\n#gamma\n"), None).unwrap();
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
        assert!(!g.allows(&basic("alpha:alpha")));
        assert!(!g.allows(&HeaderMap::new()));
    }

    #[test]
    fn a_file_without_tokens_is_refused() {
        assert!(matches!(
            guard(Some("# only a comment\n\n"), None),
            Err(AuthError::Entries {
                key: "bearer_tokens_file",
                ..
            })
        ));
    }

    #[test]
    fn basic_users_are_read_as_user_colon_password_lines() {
        let g = guard(None, Some("# people\nann:s3cret\n  bob:pa:ss word  \n")).unwrap();
        assert!(g.allows(&basic("ann:s3cret")));
        assert!(g.allows(&basic("bob:pa:ss word")));
        assert!(g.allows(&headers(&format!(
            "bAsIc   {}",
            STANDARD.encode("ann:s3cret")
        ))));
        for refused in [
            "ann:s3cre",
            "ann:s3cret ",
            "bob:pa",
            "ann:pa:ss word",
            "ann",
            ":s3cret",
            "",
        ] {
            assert!(!g.allows(&basic(refused)), "{refused:?}");
        }
        // Not base64, base64 without its padding, another scheme, the pair unencoded.
        for refused in [
            "Basic !!!",
            "Basic YW5uOnMzY3JldA",
            "Basic ann:s3cret",
            "Bearer ann:s3cret",
        ] {
            assert!(!g.allows(&headers(refused)), "{refused}");
        }
        assert_eq!(
            g.challenges,
            [HeaderValue::from_static("Basic realm=\"zone\"")]
        );
    }

    #[test]
    fn with_both_files_either_scheme_passes_and_both_are_challenged() {
        let g = guard(Some("alpha\n"), Some("ann:s3cret\n")).unwrap();
        assert!(g.allows(&headers("Bearer alpha")));
        assert!(g.allows(&basic("ann:s3cret")));
        assert!(!g.allows(&headers("Bearer s3cret")));
        assert!(!g.allows(&basic("ann:alpha")));
        let resp = g.unauthorized();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let challenges: Vec<_> = resp.headers().get_all(WWW_AUTHENTICATE).iter().collect();
        assert_eq!(
            challenges,
            ["Bearer realm=\"zone\"", "Basic realm=\"zone\""]
        );
    }

    #[test]
    fn a_bad_users_file_is_refused_by_line_without_quoting_it() {
        for (text, expected) in [
            ("# nobody\n", "holds no entry"),
            (
                "ann:ok\nsecretpassword\n",
                "line 2: expected `user:password`",
            ),
            (
                "ann:\n",
                "line 1: the user and the password must not be empty",
            ),
            (":secretpassword\n", "line 1: the user and the password"),
            (
                "ann:one\n\nann:secretpassword\n",
                "line 3: repeats the user of line 1",
            ),
        ] {
            let p = problem(guard(None, Some(text)));
            assert!(p.starts_with(expected), "{text:?}: {p}");
            assert!(!p.contains("secretpassword"), "{p}");
        }
    }
}
