//! The exec handler: runs an external program per request, CGI/1.1 style, on the calling thread.
//!
//! The program is started from its argv (never through a shell) in its own process group, with a
//! cleared environment plus the CGI meta-variables, the request body on stdin. Its stdout becomes
//! the response, as is (`output = "raw"`) or parsed as a CGI response (`output = "cgi"`). Every
//! run is bounded: past `timeout` the whole group gets SIGTERM, then SIGKILL after `kill_grace`;
//! past `max_output_bytes` of stdout it is killed at once; when the program exits, whatever it
//! left running in its group is killed; every child is reaped. With `stream = true` the response
//! head goes out once the CGI headers (or the first raw bytes) are read, and the rest of stdout
//! follows as it comes (see `stream`).
//!
//! While it runs, each child's process group is registered in the server's own [`Registry`] (one
//! per server, held by the front end's `App`), so a shutdown kills that server's children and no
//! other server's.
//!
//! # Layout
//! - `env`: the child's environment and the CGI meta-variables.
//! - `child`: spawning, feeding, capturing, time limit, reaping.
//! - `cgi`: stdout to response, raw or CGI.
//! - `stderr_log`: the rate limit on logging a successful program's stderr.
//! - `stream`: a streamed run (`stream = true`): stdout forwarded chunk by chunk as it comes.

mod cgi;
mod child;
mod env;
mod stderr_log;
mod stream;
#[cfg(test)]
mod tests;

use child::Failure;
pub use children::Registry;
use common::handler::{Handler, HandlerError, JobRequest, JobResponse};
use config::{ExecConfig, ExecOutput};
use nix::sys::signal::Signal;
use std::sync::Arc;

/// Runs an endpoint's program for each request. See the [module docs](self).
#[derive(Debug)]
pub struct ExecHandler {
    endpoint: String,
    cfg: ExecConfig,
    registry: Arc<Registry>,
    stderr_limit: stderr_log::StderrLimit,
}

impl ExecHandler {
    /// The handler for the endpoint at `endpoint_path` (its `SCRIPT_NAME`), running `cfg`, whose
    /// children register in the server's `registry`.
    pub fn new(endpoint_path: &str, cfg: ExecConfig, registry: Arc<Registry>) -> ExecHandler {
        ExecHandler {
            endpoint: endpoint_path.to_string(),
            cfg,
            registry,
            stderr_limit: stderr_log::StderrLimit::new(),
        }
    }

    /// The answer for a run that failed with `failure`.
    fn error(&self, failure: Failure) -> HandlerError {
        error(&self.endpoint, &self.cfg, &self.registry, failure)
    }
}

/// The answer for a run of `cfg` at `endpoint` that failed with `failure`.
pub(crate) fn error(
    endpoint: &str,
    cfg: &ExecConfig,
    registry: &Registry,
    failure: Failure,
) -> HandlerError {
    match failure {
        Failure::Spawn(e) => {
            // The details (program, working directory, cause) name server paths: they go to
            // the log, and the client is told only what happened.
            let program = cfg.command.first().map_or("", String::as_str);
            tracing::warn!(
                endpoint = %endpoint,
                program,
                cwd = cfg.cwd.as_ref().map(|c| tracing::field::display(c.display())),
                cause = %e,
                "cannot start the program"
            );
            HandlerError::BadGateway("cannot start the program".into())
        }
        Failure::Exit(code) => {
            HandlerError::BadGateway(format!("program exited with status {code}"))
        }
        // Killed from outside while the server stops (its shutdown kill, most likely).
        Failure::Signal(_) if registry.shutting_down() => {
            HandlerError::Unavailable("server shutting down".into())
        }
        Failure::Signal(signal) => {
            let name = Signal::try_from(signal)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| signal.to_string());
            HandlerError::BadGateway(format!("program killed by signal {name}"))
        }
        Failure::Timeout => HandlerError::Timeout(format!(
            "ran past timeout_ms ({} ms) and was killed",
            cfg.timeout.as_millis()
        )),
        Failure::Idle => HandlerError::Timeout(format!(
            "no output for stream_idle_timeout_ms ({} ms); the program was killed",
            cfg.stream_idle_timeout.as_millis()
        )),
        Failure::ClientGone => {
            HandlerError::ClientGone("the client went away; the program was killed".into())
        }
        Failure::OutputCap => HandlerError::BadGateway(format!(
            "output exceeded max_output_bytes ({})",
            cfg.max_output_bytes
        )),
        Failure::OutputLeftOpen => HandlerError::BadGateway(
            "program exited but a process outside its group kept stdout open".into(),
        ),
        Failure::Internal(what) => HandlerError::Internal(format!("exec: {what}")),
    }
}

impl Handler for ExecHandler {
    fn handle(&self, req: &JobRequest) -> Result<JobResponse, HandlerError> {
        if self.cfg.stream {
            return stream::handle(&self.endpoint, &self.cfg, &self.registry, req);
        }
        let env = env::child_env(&self.endpoint, &self.cfg, req);
        let run = child::run(
            &self.cfg,
            env,
            req.body.clone(),
            &self.registry,
            &req.client,
        );
        let result =
            run.result
                .map_err(|failure| self.error(failure))
                .and_then(|stdout| match self.cfg.output {
                    ExecOutput::Raw => Ok(cgi::raw_response(stdout, &self.cfg.content_type)),
                    ExecOutput::Cgi => cgi::cgi_response(stdout, &self.cfg.content_type),
                });
        match &result {
            // What a successful program says on stderr is worth seeing at info (its first
            // bytes only, a few lines a second per endpoint at most, see `stderr_log`).
            Ok(resp) if !run.stderr.is_empty() => {
                if let Some(suppressed) = self.stderr_limit.admit(std::time::Instant::now()) {
                    tracing::info!(
                        endpoint = %self.endpoint,
                        status = resp.status().as_u16(),
                        stderr = %run.stderr,
                        suppressed,
                        "program finished"
                    );
                }
            }
            Ok(resp) => tracing::debug!(
                endpoint = %self.endpoint,
                status = resp.status().as_u16(),
                "program finished"
            ),
            Err(e) => tracing::warn!(
                endpoint = %self.endpoint,
                status = e.status().as_u16(),
                cause = %e,
                stderr = %run.stderr,
                "program failed"
            ),
        }
        result
    }
}
