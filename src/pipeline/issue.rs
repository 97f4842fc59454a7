//! Issuing an RTC, RTM or Chat token: authenticate, decide, build.

use super::{Call, Flow, InvalidRequest, Outcome, Pipeline, Refusal};
use crate::domain::Principal;
use crate::gate::Issued;
use crate::policy::Request;

impl Pipeline {
    /// Issues the token `request` asks for, if the caller may have it.
    pub async fn issue(
        &self,
        call: Call<'_>,
        request: Result<Request, InvalidRequest>,
    ) -> Outcome<Issued> {
        let mut flow = self.begin(&call);
        let result = async {
            let principal = self.authenticate(&mut flow, call.authorization).await?;
            let request = request?;
            self.decide_and_build(&mut flow, &principal, &request)
        }
        .await;
        self.finish(flow, result)
    }

    /// The decision and the build for an authenticated caller's request
    /// (shared with ext_authz).
    pub(super) fn decide_and_build(
        &self,
        flow: &mut Flow,
        principal: &Principal,
        request: &Request,
    ) -> Result<Issued, Refusal> {
        flow.event.channel = request.channel.as_ref().map(|c| c.as_str().to_owned());
        let salt = Self::salt()?;
        Ok(self.gate.issue(principal, request, flow.now, salt)?)
    }
}
