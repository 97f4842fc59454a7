//! Policy file loading: `Policy::from_toml` (what a `rules_file` is), and,
//! when the rules compile, their evaluation for a few fixed requests, so
//! fuzzed patterns and CEL conditions also run.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::domain::{ChannelName, Role};
use tokengate::policy::{Action, ChannelScope, Policy, Request, RequestedIdentity, Service};
use tokengate_fuzz::{NOW, principal};

/// The projects the fuzzed rules may name.
const PROJECTS: [&str; 2] = ["main", "events"];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((policy, _warnings)) = Policy::from_toml(text, &PROJECTS) else {
        return;
    };
    let caller = principal();
    let mut rtc = Request::new(Action::Issue(Service::Rtc));
    if let Ok(channel) = ChannelName::parse("team-blue-standup") {
        rtc = rtc.with_channel(channel);
    }
    rtc.role = Some(Role::Publisher);
    let mut wildcard = Request::new(Action::Issue(Service::Rtc));
    wildcard.channel = Some(ChannelScope::Wildcard);
    wildcard.identity = RequestedIdentity::AnyUid;
    let mut rtm = Request::new(Action::Issue(Service::Rtm));
    rtm.identity = RequestedIdentity::Account("bob".to_owned());
    let chat = Request::new(Action::Issue(Service::Chat));
    let inspect = Request::new(Action::Inspect);
    for request in [&rtc, &wildcard, &rtm, &chat, &inspect] {
        let _ = policy.explain(&caller, request, NOW);
    }
});
