//! (placeholder until the exec handler lands from the parallel branch)
#![allow(missing_docs)]
pub mod children {
    pub fn begin_shutdown() {}
    pub fn kill_all() {}
    pub fn live() -> usize {
        0
    }
}
pub struct ExecHandler;
impl ExecHandler {
    pub fn new(_: &str, _: crate::config::ExecConfig) -> Self {
        ExecHandler
    }
}
impl crate::handler::Handler for ExecHandler {
    fn handle(
        &self,
        _: &crate::handler::JobRequest,
    ) -> Result<crate::handler::JobResponse, crate::handler::HandlerError> {
        Err(crate::handler::HandlerError::Internal(
            "exec not built yet".into(),
        ))
    }
}
