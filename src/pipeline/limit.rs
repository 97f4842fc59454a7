//! The rate-limit step: after the rules granted, before the token is built,
//! every limit that counts the grant is checked once (`limits`), counted in
//! the metrics, and a call over a limit is refused with the exact wait.

use tracing::Instrument as _;
use tracing::field::Empty;

use super::{Flow, Pipeline, Refusal};
use crate::entropy;
use crate::limits::{self, Subject};
use crate::policy::{Caller, Grant, Request};
use crate::telemetry;

/// How long a caller is told to wait when a fail-closed limit cannot be checked.
const UNAVAILABLE_RETRY_SECS: u32 = 1;

impl Pipeline {
    /// Spends the grant's budget in every limit that counts it; refuses a
    /// call over any of them (RESOURCE_EXHAUSTED with the wait), or one a
    /// fail-closed limit cannot check (UNAVAILABLE).
    pub(super) async fn limit(
        &self,
        flow: &mut Flow,
        caller: Caller<'_>,
        request: &Request,
        grant: &Grant,
    ) -> Result<(), Refusal> {
        let set = &flow.live.limits;
        if set.is_empty() {
            return Ok(());
        }
        let subject = Subject {
            caller,
            request,
            rule: grant.rule(),
            unix_now: flow.now,
        };
        let span = tracing::info_span!("limit", limited = Empty);
        let checks = self
            .limiter
            .check(set, grant.service(), &subject, entropy::monotonic_ns())
            .instrument(span.clone())
            .await;
        if let Some(metrics) = &self.metrics {
            for check in &checks {
                metrics.record_limit(&check.limit, check.outcome.as_str(), check.backend.as_str());
            }
        }
        match limits::verdict(&checks) {
            None => Ok(()),
            Some(Ok(exceeded)) => {
                let names = exceeded.names();
                telemetry::record(&span, "limited", names.as_str());
                flow.event.limits = Some(names);
                flow.event.rule = Some(grant.rule().to_owned());
                Err(Refusal::Limited(exceeded))
            }
            // The caller learns that, not Redis's address or error: the
            // limiter logged that when Redis began to fail.
            Some(Err(error)) => Err(Refusal::Unavailable {
                reason: "limits_unavailable",
                detail: match error {
                    limits::LimitError::Timeout(_) => "a rate limit that fails closed cannot be checked: its store did not answer in time",
                    limits::LimitError::Redis(_) => "a rate limit that fails closed cannot be checked: its store is unavailable",
                }
                .to_owned(),
                retry_after_secs: UNAVAILABLE_RETRY_SECS,
            }),
        }
    }
}
