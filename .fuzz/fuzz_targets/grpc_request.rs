//! Protobuf request conversion: the bytes decoded (with prost) as each
//! request message of the token API, and every one that decodes converted by
//! `tokengate::grpc::convert`, as the service does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokengate::grpc::convert;
use tokengate::grpc::pb;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = pb::IssueRtcTokenRequest::decode(data) {
        let _ = convert::rtc_request(&msg, "");
    }
    if let Ok(msg) = pb::IssueRtmTokenRequest::decode(data) {
        let _ = convert::rtm_request(&msg, "");
    }
    if let Ok(msg) = pb::IssueChatTokenRequest::decode(data) {
        let _ = convert::chat_request(&msg, "");
    }
    if let Ok(msg) = pb::RenewTokenRequest::decode(data) {
        let _ = convert::renew_request(&msg);
    }
    if let Ok(msg) = pb::InspectTokenRequest::decode(data) {
        let _ = convert::expectation(&msg);
    }
    if let Ok(msg) = pb::ExplainAccessRequest::decode(data) {
        use pb::explain_access_request::Request as Wanted;
        // The prefixes ExplainAccess uses for the nested request's fields.
        let _ = match &msg.request {
            Some(Wanted::Rtc(r)) => convert::rtc_request(r, "rtc."),
            Some(Wanted::Rtm(r)) => convert::rtm_request(r, "rtm."),
            Some(Wanted::Chat(r)) => convert::chat_request(r, "chat."),
            None => return,
        };
    }
});
