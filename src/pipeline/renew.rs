//! Renewing a token this service issued: the rules are re-run for the
//! token's own channel, identity, role and services.

use tracing::Instrument as _;

use super::{Call, InvalidRequest, Outcome, Pipeline};
use crate::gate::{Issued, Lifetimes};
use crate::policy::ChannelScope;

/// A renewal as the adapters convert it.
#[derive(Debug, Clone)]
pub struct RenewRequest {
    /// The 007 token to renew. Never logged.
    pub token: String,
    /// The channel, for RTM and Chat tokens that carry none.
    pub channel: Option<ChannelScope>,
    /// The lifetimes the caller asks for.
    pub lifetimes: Lifetimes,
}

impl Pipeline {
    /// Renews `request.token` for the caller, never beyond today's grant.
    pub async fn renew(
        &self,
        call: Call<'_>,
        request: Result<RenewRequest, InvalidRequest>,
    ) -> Outcome<Issued> {
        let mut flow = self.begin(&call, call.trace);
        let span = flow.span.clone();
        let result = async {
            let who = self
                .authenticate(&mut flow, &call, call.authorization)
                .await?;
            let request = request?;
            flow.event.channel = request.channel.as_ref().map(|c| c.as_str().to_owned());
            let renewal =
                flow.live
                    .gate
                    .renewal(&request.token, request.channel, request.lifetimes)?;
            self.decide_then_build(&mut flow, who.caller(), &renewal)
                .await
        }
        .instrument(span)
        .await;
        self.finish(flow, result)
    }
}
