//! The command line: every server flag (each also a `FIDDLER_CRAB_*` environment variable), the
//! listen-address forms, and `serve`'s routes written out as a config.

use clap::builder::BoolishValueParser;
use clap::{Parser, Subcommand, ValueEnum};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

/// Puts slow, heavy programs behind bounded, overflow-shedding HTTP endpoints.
///
/// Every option can also be set by the environment variable named beside it; a flag on the
/// command line wins over the variable.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// TOML config file; without it the embedded default is served.
    #[arg(long, short = 'c', global = true, env = "FIDDLER_CRAB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen on ADDR instead of the config's `server.listen`: `IP:PORT`, `[IPv6]:PORT`,
    /// `HOST:PORT` (a name such as `localhost`, resolved at start: its first IPv4 address, else
    /// its first address) or `:PORT` (every interface, 0.0.0.0).
    #[arg(long, global = true, value_name = "ADDR", env = "FIDDLER_CRAB_LISTEN", value_parser = parse_listen)]
    pub listen: Option<SocketAddr>,
    /// Listen on this port, keeping the host of `--listen` or of the config.
    #[arg(
        long,
        short = 'p',
        global = true,
        value_name = "PORT",
        env = "FIDDLER_CRAB_PORT"
    )]
    pub port: Option<u16>,
    /// Serve HTTPS with a certificate generated at start (development only; its fingerprint is
    /// logged). Overrides `[server.tls]`'s certificate.
    #[arg(long, global = true, env = "FIDDLER_CRAB_SELF_SIGNED", value_parser = BoolishValueParser::new())]
    pub self_signed: bool,
    /// Log level or filter in `RUST_LOG` syntax (`debug`, `info,fiddler_crab::access=off`).
    /// Default: `RUST_LOG` if set, else `info`.
    #[arg(long, global = true, value_name = "FILTER", env = "FIDDLER_CRAB_LOG_LEVEL", value_parser = parse_log_filter)]
    pub log_level: Option<String>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "FIDDLER_CRAB_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to do; without one, serve the config.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a config (`--config FILE`, or the embedded default) and exit.
    Check,
    /// Print the embedded default config.
    DefaultConfig,
    /// Serve programs without a config file: `serve /date date /wc "wc -w"`.
    ///
    /// Each PATH becomes a crab-mode endpoint (one job at a time, FIFO; GET and POST) whose
    /// COMMAND is run by `sh -c` with the request body on stdin and the request in CGI/1.1
    /// variables; its stdout is the response. Every other setting is the config file's default
    /// (see config/reference.toml). The routes go through the same validation as a file.
    Serve {
        /// Print the config these routes make, as a file to start from, and exit.
        #[arg(long)]
        print_config: bool,
        /// PATH COMMAND pairs.
        #[arg(value_name = "PATH COMMAND", num_args = 2.., required = true)]
        routes: Vec<String>,
    },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line.
    Json,
}

/// A listen address: `IP:PORT`, `[IPv6]:PORT`, `:PORT` (0.0.0.0) or `HOST:PORT`, a name resolved
/// now (its first IPv4 address, else its first address).
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "expected HOST:PORT, IP:PORT or :PORT (a port alone is `:{text}` or `--port {text}`)"
        ));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{port}` is not a port (0 to 65535)"))?;
    if host.is_empty() {
        return Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("`{host}` resolves to no address"))
}

/// A log filter in `RUST_LOG` syntax (tracing-subscriber's `Targets`), checked now so a typo is a
/// usage error. `Targets` alone would take `verbose` as a target name and log nothing else, so
/// every directive must be a level or `TARGET=LEVEL`.
fn parse_log_filter(text: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            Some(_) => return Err(format!("`{directive}` names no target")),
            None => directive,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "`{directive}`: expected a level ({}) or TARGET=LEVEL",
                LEVELS.join(", ")
            ));
        }
    }
    text.parse::<tracing_subscriber::filter::Targets>()
        .map(|_| text.to_string())
        .map_err(|e| e.to_string())
}

/// The config that `serve`'s PATH COMMAND pairs describe, as TOML text for the config loader.
pub fn serve_config_text(routes: &[String]) -> Result<String, String> {
    if !routes.len().is_multiple_of(2) {
        let last = routes.last().map_or("", String::as_str);
        return Err(format!(
            "serve takes PATH COMMAND pairs: `{last}` has no command"
        ));
    }
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut text = String::from(
        "# Written by `fiddler_crab serve`; every key is documented in config/reference.toml.\n",
    );
    for pair in routes.chunks_exact(2) {
        let (path, command) = (&pair[0], &pair[1]);
        if command.trim().is_empty() {
            return Err(format!("the command for `{path}` is empty"));
        }
        // A fmt::Write into a String cannot fail.
        let _ = write!(
            text,
            "\n[[endpoint]]\npath = {}\nmode = \"crab\"\n\n[endpoint.exec]\ncommand = [\"sh\", \"-c\", {}]\n",
            quote(path),
            quote(command),
        );
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_addresses_ports_alone_and_names() {
        assert_eq!(
            parse_listen("127.0.0.1:80"),
            Ok(([127, 0, 0, 1], 80).into())
        );
        assert_eq!(parse_listen("[::1]:80").map(|a| a.is_ipv6()), Ok(true));
        assert_eq!(parse_listen(":8080"), Ok(([0, 0, 0, 0], 8080).into()));
        assert_eq!(
            parse_listen("localhost:9").map(|a| (a.ip().is_loopback(), a.port())),
            Ok((true, 9))
        );
    }

    #[test]
    fn listen_errors_say_what_is_wrong() {
        let err = |s| parse_listen(s).err().unwrap_or_default();
        assert!(err("8080").contains("HOST:PORT"));
        assert!(err(":http").contains("not a port"));
        assert!(err(":70000").contains("not a port"));
        assert!(err("no-such-host.invalid:80").contains("cannot resolve `no-such-host.invalid`"));
    }

    #[test]
    fn log_filters_are_levels_or_target_levels() {
        for good in [
            "info",
            "WARN",
            "info,fiddler_crab::access=off",
            "hyper=warn, debug",
        ] {
            assert_eq!(parse_log_filter(good), Ok(good.to_string()));
        }
        for bad in ["verbose", "info,[[", "=info", "hyper=loud"] {
            assert!(parse_log_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serve_routes_need_pairs_and_commands() {
        let routes = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(serve_config_text(&routes(&["/a", "date", "/b"]))
            .unwrap_or_else(|e| e)
            .contains("`/b` has no command"));
        assert!(serve_config_text(&routes(&["/a", " "]))
            .unwrap_or_else(|e| e)
            .contains("empty"));
        let text = serve_config_text(&routes(&["/q", "echo \"hi\" | tr a-z A-Z"]));
        assert!(text.is_ok_and(|t| t
            .contains(r#"command = ["sh", "-c", 'echo "hi" | tr a-z A-Z']"#)
            || t.contains(r#"command = ["sh", "-c", "echo \"hi\" | tr a-z A-Z"]"#)));
    }
}
