//! ext_authz request conversion: `routes::check_path`, `Routes::route` and
//! `Routes::request` over the fuzz config's routes (compiled once, by
//! `tokengate::config::load`).
//!
//! The input is text: the method on the first line, the path on the second,
//! then one `name: value` header per line.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tokengate::routes::{Routes, check_path};
use tokengate_fuzz::config;

static ROUTES: LazyLock<Routes> = LazyLock::new(|| {
    config()
        .into_parts()
        .ext_authz
        .expect("the fuzz config enables ext_authz")
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or_default();
    let path = lines.next().unwrap_or_default();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    // The service refuses a path check_path refuses before routing; route
    // and request must still be total on every path, so both always run.
    let _ = check_path(path);
    let routes = &*ROUTES;
    if let Some(matched) = routes.route(method, path) {
        let header = |name: &str| {
            headers
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let _ = routes.request(&matched, &header);
    }
});
