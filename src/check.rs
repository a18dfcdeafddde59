//! The file-system check: what a config names on disk exists and can be used.
//!
//! Kept out of the pure config parser, which never touches the file system: `fiddler_crab check`,
//! the server's start and a SIGHUP reload run it. Each problem is a [`ConfigError`], printed as
//! `FILE: KEY: PROBLEM`.

use config::{Config, ConfigError, ExecConfig, HandlerConfig, UpstreamAddress};
use std::io::ErrorKind;
use std::net::ToSocketAddrs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Script extensions: an argument ending in one of them names a file that must exist.
const SCRIPT_EXTENSIONS: [&str; 4] = [".py", ".sh", ".pl", ".rb"];

/// Every problem with the files `config` names (from `file`): each exec program found on PATH or
/// executable, each argument that looks like a file (a script extension, or a `/` in it) existing,
/// each `cwd` a directory, each worker endpoint's socket directory writable or creatable, each
/// upstream's host resolving (or its socket's directory existing) and its `https://` servers'
/// trusted roots (`tls_ca_file`, else the system's store) and client certificate readable, each
/// token and users file readable and well-formed, and the TLS certificate and key readable and
/// matching. Empty if none.
pub fn check_files(config: &Config, file: &str) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    let mut problem = |key: String, problem: String| {
        problems.push(ConfigError {
            file: file.to_string(),
            key,
            problem,
        })
    };
    for (i, ep) in config.endpoints.iter().enumerate() {
        match &ep.handler {
            HandlerConfig::Exec(exec) => {
                for (key, p) in exec_problems(exec) {
                    problem(format!("endpoint[{i}].exec.{key}"), p);
                }
            }
            HandlerConfig::Worker(worker) => {
                if let Err(p) = socket_dir_problem(worker.socket_dir.as_deref()) {
                    problem(format!("endpoint[{i}].worker.socket_dir"), p);
                }
            }
            HandlerConfig::Upstream(upstream) => {
                for server in &upstream.servers {
                    if let Some(p) = upstream_problem(&server.address) {
                        problem(format!("endpoint[{i}].upstream.{}", server.key), p);
                    }
                }
                if let Some(tls) = &upstream.tls {
                    if let Err((key, p)) = upstream::tls::client_config(tls) {
                        problem(format!("endpoint[{i}].upstream.{key}"), p);
                    }
                }
            }
            HandlerConfig::Builtin(_) => {}
        }
    }
    for (i, ep) in config.endpoints.iter().enumerate() {
        // The server's default is reported once, under its own key.
        if let Some(auth) = ep
            .auth
            .as_ref()
            .filter(|a| Some(*a) != config.server.auth.as_ref())
        {
            if let Err(e) = frontend::auth::Guard::load(auth) {
                problem(format!("endpoint[{i}].auth.{}", e.key()), e.to_string());
            }
        }
    }
    if let Some(auth) = &config.server.auth {
        if let Err(e) = frontend::auth::Guard::load(auth) {
            problem(format!("server.auth.{}", e.key()), e.to_string());
        }
    }
    if let Some(tls) = &config.server.tls {
        if let Err(e) = frontend::tls::load(&tls.settings) {
            problem("server.tls".to_string(), e.to_string());
        }
    }
    problems
}

/// Why an upstream's address cannot be right, if it cannot: a host name that does not resolve,
/// or a Unix socket whose directory does not exist. The upstream itself need not be running yet
/// (its health check and `/readyz` tell when it is).
fn upstream_problem(address: &UpstreamAddress) -> Option<String> {
    match address {
        UpstreamAddress::Tcp { host, port, .. } => {
            let resolves = (host.as_str(), *port)
                .to_socket_addrs()
                .is_ok_and(|mut addrs| addrs.next().is_some());
            (!resolves).then(|| format!("the host `{}` does not resolve", config::quote(host)))
        }
        UpstreamAddress::Unix(socket) => match socket.parent() {
            Some(dir) if !dir.is_dir() => Some(format!(
                "the socket's directory {} does not exist",
                dir.display()
            )),
            _ => None,
        },
    }
}

/// The problems of one exec table, as (key under `exec`, problem).
fn exec_problems(exec: &ExecConfig) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let base = match &exec.cwd {
        Some(cwd) if !cwd.is_dir() => {
            let what = if cwd.exists() {
                "is not a directory"
            } else {
                "does not exist"
            };
            found.push(("cwd".to_string(), format!("{} {what}", cwd.display())));
            return found;
        }
        Some(cwd) => cwd.clone(),
        None => PathBuf::from("."),
    };
    if let Some(program) = exec.command.first() {
        if let Err(p) = program_problem(program, &base) {
            found.push(("command[0]".to_string(), p));
        }
    }
    for (n, arg) in exec.command.iter().enumerate().skip(1) {
        if looks_like_file(arg) && !base.join(arg).exists() {
            found.push((format!("command[{n}]"), format!("{arg} does not exist")));
        }
    }
    found
}

/// Why a worker pool could not make its socket directory under `configured` (its `socket_dir`,
/// else the default base), if it could not: the base must be a writable directory, or creatable
/// (its nearest existing ancestor a writable directory), and short enough for socket paths.
/// Writability is probed by creating and removing an empty directory, which also tells the truth
/// for root, ACLs and read-only file systems.
fn socket_dir_problem(configured: Option<&Path>) -> Result<(), String> {
    let (base, what) = match configured {
        Some(dir) => (dir.to_path_buf(), String::new()),
        None => (
            workers::process::default_socket_base(),
            " (the default: $XDG_RUNTIME_DIR, else the temporary directory)".to_string(),
        ),
    };
    // The private directory and a socket name go inside it (as `socket_dir` is checked).
    let room = config::worker::MAX_SOCKET_PATH - 40;
    if base.as_os_str().len() > room {
        return Err(format!(
            "{}{what} is too long for Unix socket paths (at most {room} bytes)",
            base.display()
        ));
    }
    let mut existing = base.as_path();
    loop {
        match existing.metadata() {
            Ok(m) if m.is_dir() => break,
            Ok(_) => return Err(format!("{}{what} is not a directory", existing.display())),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                match existing.parent() {
                    // A relative path's last ancestor is the working directory.
                    Some(parent) if parent.as_os_str().is_empty() => existing = Path::new("."),
                    Some(parent) => existing = parent,
                    None => break,
                }
            }
            Err(e) => return Err(format!("{}{what}: {e}", existing.display())),
        }
    }
    let probe = existing.join(format!(".fiddler-crab-check-{}", std::process::id()));
    match std::fs::create_dir(&probe) {
        Ok(()) => {
            let _ = std::fs::remove_dir(&probe);
            Ok(())
        }
        Err(e) if existing == base => Err(format!("{}{what} is not writable: {e}", base.display())),
        Err(e) => Err(format!(
            "{}{what} cannot be created in {}: {e}",
            base.display(),
            existing.display()
        )),
    }
}

/// True if `arg` names a file: one word, not an option or a URL, with a script extension or a `/`.
fn looks_like_file(arg: &str) -> bool {
    !arg.is_empty()
        && !arg.starts_with('-')
        && !arg.contains("://")
        && !arg.contains(char::is_whitespace)
        && (arg.contains('/') || SCRIPT_EXTENSIONS.iter().any(|ext| arg.ends_with(ext)))
}

/// Why `program` (from the exec's `base` directory) cannot be started, if it cannot.
fn program_problem(program: &str, base: &Path) -> Result<(), String> {
    if program.contains('/') {
        let path = base.join(program);
        return match path.metadata() {
            Err(_) => Err(format!("{program} does not exist")),
            Ok(m) if !m.is_file() => Err(format!("{program} is not a file")),
            Ok(m) if m.permissions().mode() & 0o111 == 0 => {
                Err(format!("{program} is not executable"))
            }
            Ok(_) => Ok(()),
        };
    }
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            dir.join(program)
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    });
    if on_path {
        Ok(())
    } else {
        Err(format!("{program} is not found on PATH"))
    }
}
