//! The AccessToken2 ("007") parser: `v007::parse`, the signature check and
//! `inspect` against a fixed keyring, on any text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::token::inspect::{Expectation, Keyring, inspect};
use tokengate::token::v007;
use tokengate_fuzz::{KEYRING, NOW};

fuzz_target!(|data: &[u8]| {
    // Tokens arrive as gRPC strings and HTTP header values, so as UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (app_id, certificates) = &*KEYRING;
    if let Ok(parsed) = v007::parse(text) {
        for (_, certificate) in certificates {
            let _ = parsed.verify(certificate);
        }
    }
    let keyrings = [Keyring {
        project: "main",
        app_id: Some(app_id),
        certificates,
    }];
    let expected = Expectation {
        channel: Some("7d72365eb983485397e3e3f9d460bdda".to_owned()),
        uid: Some("2882341273".to_owned()),
    };
    let _ = inspect(text, &keyrings, &expected, NOW);
});
