//! Issuing an RTC, RTM or Chat token: authenticate, decide, build.

use tracing::Instrument as _;
use tracing::field::Empty;

use super::{Call, Flow, InvalidRequest, Outcome, Pipeline, Refusal};
use crate::gate::Issued;
use crate::policy::{Caller, Request};
use crate::telemetry;

impl Pipeline {
    /// Issues the token `request` asks for, if the caller may have it.
    pub async fn issue(
        &self,
        call: Call<'_>,
        request: Result<Request, InvalidRequest>,
    ) -> Outcome<Issued> {
        let mut flow = self.begin(&call, call.trace);
        let span = flow.span.clone();
        let result = async {
            let who = self
                .authenticate(&mut flow, &call, call.authorization)
                .await?;
            let request = request?;
            self.decide_and_build(&mut flow, who.caller(), &request)
                .await
        }
        .instrument(span)
        .await;
        self.finish(flow, result)
    }

    /// The decision and the build for an authenticated caller's request
    /// (shared with ext_authz).
    pub(super) async fn decide_and_build(
        &self,
        flow: &mut Flow,
        caller: Caller<'_>,
        request: &Request,
    ) -> Result<Issued, Refusal> {
        flow.event.channel = request.channel.as_ref().map(|c| c.as_str().to_owned());
        self.decide_then_build(flow, caller, request).await
    }

    /// The facts, the rules, the rate limits, then the build, each in its own span:
    /// `decide` records the rule that decided, `limit` the limits a refused
    /// call is over, `build` the project that signs (never the token).
    pub(super) async fn decide_then_build(
        &self,
        flow: &mut Flow,
        caller: Caller<'_>,
        request: &Request,
    ) -> Result<Issued, Refusal> {
        let facts = self.facts(flow, caller, &[request]).await;
        let decide = tracing::info_span!("decide", decision = Empty, rule = Empty);
        let decided = decide
            .in_scope(|| flow.live.gate.decide(caller, request, flow.now, &facts))
            .map_err(Refusal::from);
        match &decided {
            Ok(grant) => {
                telemetry::record(&decide, "decision", "allow");
                telemetry::record(&decide, "rule", grant.rule());
            }
            Err(refusal) => {
                telemetry::record(&decide, "decision", refusal.decision());
                if let Some(rule) = refusal.rule() {
                    telemetry::record(&decide, "rule", rule);
                }
            }
        }
        drop(decide);
        let grant = decided?;
        self.limit(flow, caller, request, &grant).await?;
        let salt = Self::salt()?;
        let build = tracing::info_span!("build", project = grant.project(), services = Empty);
        let issued = build.in_scope(|| flow.live.gate.build(grant, salt))?;
        if telemetry::exporting() {
            build.record("services", issued.services().join(","));
        }
        Ok(issued)
    }
}
