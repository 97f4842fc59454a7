//! Explaining: a dry run of the rules, for a caller allowed to explain.

use tracing::Instrument as _;

use super::audit::{AuditEvent, Audited};
use super::{Call, InvalidRequest, Outcome, Pipeline};
use crate::entropy;
use crate::limits::{Budget, Subject};
use crate::policy::{Action, Decision, Request, Trace};

/// What a dry run decided, with the trace of every rule considered.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The decision the request would get.
    pub decision: Decision,
    /// Each rule considered, in order.
    pub trace: Trace,
    /// For an allow, the rate limits that would count the call, with their
    /// budgets (read, not spent).
    pub limits: Vec<Budget>,
}

impl Pipeline {
    /// Explains how the rules would decide `request` for the caller.
    pub async fn explain(
        &self,
        call: Call<'_>,
        request: Result<Request, InvalidRequest>,
    ) -> Outcome<Explanation> {
        let mut flow = self.begin(&call, call.trace);
        let span = flow.span.clone();
        let result = async {
            let who = self
                .authenticate(&mut flow, &call, call.authorization)
                .await?;
            let request = request?;
            flow.event.channel = request.channel.as_ref().map(|c| c.as_str().to_owned());
            let permission = Request::new(Action::Explain);
            let facts = self
                .facts(&mut flow, who.caller(), &[&permission, &request])
                .await;
            let (decision, trace) =
                flow.live
                    .gate
                    .explain(who.caller(), &request, flow.now, &facts)?;
            let limits = match &decision {
                Decision::Allow(grant) => {
                    let subject = Subject {
                        caller: who.caller(),
                        request: &request,
                        rule: grant.rule(),
                        unix_now: flow.now,
                    };
                    self.limiter
                        .budgets(
                            &flow.live.limits,
                            grant.service(),
                            &subject,
                            entropy::monotonic_ns(),
                        )
                        .await
                }
                _ => Vec::new(),
            };
            Ok(Explanation {
                decision,
                trace,
                limits,
            })
        }
        .instrument(span)
        .await;
        self.finish(flow, result)
    }
}

impl Audited for Explanation {
    // The event records that the caller was allowed to explain; the dry-run
    // decision is the reply, not an access decision.
    fn describe(&self, _event: &mut AuditEvent) {}
}
