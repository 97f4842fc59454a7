//! Explaining: a dry run of the rules with the trace of every rule considered.

use super::{Gate, GateError};
use crate::policy::{Action, Caller, Decision, Facts, Request, Trace};

impl Gate {
    /// A dry run of `request` with the trace of every rule. The caller must
    /// be allowed to explain. `facts` are those both decisions read.
    pub fn explain(
        &self,
        caller: Caller<'_>,
        request: &Request,
        now: u64,
        facts: &Facts,
    ) -> Result<(Decision, Trace), GateError> {
        self.authorize(caller, Action::Explain, now, facts)?;
        Ok(self.policy.explain_with_facts(caller, request, now, facts))
    }
}
