//! Explaining: a dry run of the rules with the trace of every rule considered.

use super::{Gate, GateError};
use crate::domain::Principal;
use crate::policy::{Action, Decision, Request, Trace};

impl Gate {
    /// A dry run of `request` with the trace of every rule. The caller must be allowed to explain.
    pub fn explain(
        &self,
        principal: &Principal,
        request: &Request,
        now: u64,
    ) -> Result<(Decision, Trace), GateError> {
        self.authorize(principal, Action::Explain, now)?;
        Ok(self.policy.explain(principal, request, now))
    }
}
