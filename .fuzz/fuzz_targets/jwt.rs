//! JWT header and claims parsing, through the public entry point:
//! `Authenticator::authenticate` on the raw `authorization` value, with the
//! fuzz config's issuers (an inline JWKS of three keys and an HS256 secret,
//! loaded by `tokengate::config::load`) on a current-thread runtime.
//!
//! The compact-JWT parser itself is private to `identity`; going through
//! `authenticate` reaches it exactly as a caller does (bearer extraction,
//! size cap, header, claims, issuer choice, key lookup, signature, times,
//! audience and required claims).
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokengate::identity::Authenticator;
use tokengate_fuzz::{NOW, config};

struct Fixture {
    runtime: tokio::runtime::Runtime,
    authenticator: Authenticator,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let issuers = config().into_parts().issuers;
    let authenticator = runtime.block_on(async {
        let authenticator = Authenticator::start(issuers).expect("the issuers start");
        tokio::time::timeout(Duration::from_secs(10), authenticator.wait_ready())
            .await
            .expect("the inline keys load");
        authenticator
    });
    Fixture {
        runtime,
        authenticator,
    }
});

fuzz_target!(|data: &[u8]| {
    // Metadata values reach the authenticator as `&str`.
    let Ok(authorization) = std::str::from_utf8(data) else {
        return;
    };
    let fixture = &*FIXTURE;
    let _ = fixture
        .runtime
        .block_on(fixture.authenticator.authenticate(Some(authorization), NOW));
});
