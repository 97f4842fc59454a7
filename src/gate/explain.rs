//! Explaining: a dry run of the rules with the trace of every rule considered.

use super::{Gate, GateError};
use crate::policy::{Action, Caller, Decision, Request, Trace};

impl Gate {
    /// A dry run of `request` with the trace of every rule. The caller must be allowed to explain.
    pub fn explain(
        &self,
        caller: Caller<'_>,
        request: &Request,
        now: u64,
    ) -> Result<(Decision, Trace), GateError> {
        self.authorize(caller, Action::Explain, now)?;
        Ok(self.policy.explain(caller, request, now))
    }
}
