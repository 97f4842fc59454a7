//! The legacy AccessToken ("006") parser: `v006::parse`, the signature check
//! and `inspect` against a fixed keyring, on any text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::token::inspect::{Expectation, Keyring, inspect};
use tokengate::token::v006;
use tokengate_fuzz::{KEYRING, NOW};

/// The channel and uid of Agora's 006 reference vector.
const CHANNEL: &str = "7d72365eb983485397e3e3f9d460bdda";
const UID: &str = "2882341273";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (app_id, certificates) = &*KEYRING;
    if let Ok(parsed) = v006::parse(text) {
        for (_, certificate) in certificates {
            let _ = parsed.verify(certificate, CHANNEL, UID);
        }
    }
    // Inspect with and without the expected channel and uid: only with both
    // is a 006 signature checked.
    let keyrings = [Keyring {
        project: "main",
        app_id: Some(app_id),
        certificates,
    }];
    let expected = Expectation {
        channel: Some(CHANNEL.to_owned()),
        uid: Some(UID.to_owned()),
    };
    let _ = inspect(text, &keyrings, &expected, NOW);
    let _ = inspect(text, &keyrings, &Expectation::default(), NOW);
});
