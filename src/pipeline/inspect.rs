//! Inspecting a token: decode, verify and diagnose errors 109 and 110.

use tracing::Instrument as _;

use super::audit::{AuditEvent, Audited};
use super::{Call, InvalidRequest, Outcome, Pipeline};
use crate::gate::{Expectation, Inspection};
use crate::policy::{Action, Request};

/// An inspection as the adapters convert it.
#[derive(Debug, Clone)]
pub struct InspectRequest {
    /// The 006 or 007 token. Never logged.
    pub token: String,
    /// What the client joined with, to explain a 110.
    pub expected: Expectation,
}

impl Pipeline {
    /// Inspects a token, if the caller may.
    pub async fn inspect(
        &self,
        call: Call<'_>,
        request: Result<InspectRequest, InvalidRequest>,
    ) -> Outcome<Inspection> {
        let mut flow = self.begin(&call, call.trace);
        let span = flow.span.clone();
        let result = async {
            let who = self
                .authenticate(&mut flow, &call, call.authorization)
                .await?;
            let request = request?;
            flow.event.channel = request.expected.channel.clone();
            let permission = Request::new(Action::Inspect);
            let facts = self.facts(&mut flow, who.caller(), &[&permission]).await;
            Ok(flow.live.gate.inspect(
                who.caller(),
                &request.token,
                &request.expected,
                flow.now,
                &facts,
            )?)
        }
        .instrument(span)
        .await;
        self.finish(flow, result)
    }
}

impl Audited for Inspection {
    fn describe(&self, event: &mut AuditEvent) {
        event.project.clone_from(&self.project);
        event.token = Some(self.fingerprint.clone());
    }
}
