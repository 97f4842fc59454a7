//! Inspecting: authorize the caller, then run the token core's pure
//! inspection over the configured projects (decode, verify, expiries, the
//! 109/110 diagnosis).

use super::{Gate, GateError};
use crate::policy::{Action, Caller, Facts};
use crate::token::inspect::{self, Expectation, Inspection, Keyring};

impl Gate {
    /// Decodes a 006 or 007 token, finds the project and certificate that verify it,
    /// and lists what would make Agora refuse it at `now`.
    pub fn inspect(
        &self,
        caller: Caller<'_>,
        token: &str,
        expected: &Expectation,
        now: u64,
        facts: &Facts,
    ) -> Result<Inspection, GateError> {
        self.authorize(caller, Action::Inspect, now, facts)?;
        let keyrings: Vec<Keyring<'_>> = self
            .projects
            .values()
            .map(|p| Keyring {
                project: &p.name,
                app_id: Some(&p.app_id),
                certificates: &p.certificates,
            })
            .collect();
        inspect::inspect(token, &keyrings, expected, now)
            .map_err(|e| GateError::BadToken(e.to_string()))
    }
}
