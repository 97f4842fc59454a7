//! The facts step: before the rules decide, the facts that the rules able
//! to decide the call read are fetched at once (`facts`), each counted and
//! timed in the metrics, and handed to the decision as data. Nothing here
//! decides: an unavailable fact is a value the rules fail closed on.

use tracing::Instrument as _;

use super::{Flow, Pipeline};
use crate::entropy;
use crate::facts::FetchOutcome;
use crate::policy::{Caller, FactQuery, Facts, Request};
use crate::telemetry;

impl Pipeline {
    /// The facts deciding `requests` for `caller` may read (for explain,
    /// the permission to explain and the explained request), each fetched once.
    pub(super) async fn facts(
        &self,
        flow: &mut Flow,
        caller: Caller<'_>,
        requests: &[&Request],
    ) -> Facts {
        let gate = &flow.live.gate;
        if !gate.reads_facts() {
            return Facts::none();
        }
        let mut queries: Vec<FactQuery> = Vec::new();
        for request in requests {
            for query in gate.facts_needed(caller, request) {
                if !queries.contains(&query) {
                    queries.push(query);
                }
            }
        }
        if queries.is_empty() {
            return Facts::none();
        }
        // A span of its own only while spans are exported: creating one
        // costs about as much as a cached fact's whole lookup.
        let span = if telemetry::exporting() {
            tracing::info_span!("facts", count = queries.len())
        } else {
            tracing::Span::none()
        };
        let (facts, records) = flow
            .live
            .facts
            .fetch(queries, entropy::monotonic_ns())
            .instrument(span)
            .await;
        for record in &records {
            if let Some(metrics) = &self.metrics {
                let fetched = !matches!(record.outcome, FetchOutcome::Hit | FetchOutcome::ErrorHit);
                metrics.record_fact(
                    &record.name,
                    record.outcome.as_str(),
                    fetched,
                    record.seconds,
                );
            }
            flow.event.fact(&record.name, record.outcome.as_str());
        }
        facts
    }
}
