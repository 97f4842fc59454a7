//! Token core benchmarks: the builder and the parser against their own primitives.
//!
//! A 007 token cannot cost less than three HMAC-SHA256, one zlib deflate and
//! one base64 encode; parse + verify cannot cost less than base64 decode,
//! one inflate and three HMACs. Each primitive is measured in the same run as
//! the full operation so the ratios in README "Performance → Token core" compare
//! like with like (targets: build ≤ 1.25× its primitives, parse + verify ≤
//! 1.25× inflate + HMACs).
//!
//! Run: `cargo bench --bench token` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::io::Write as _;

use criterion::{Criterion, criterion_group, criterion_main};
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use tokengate::domain::{ChannelName, Role, RtcIdentity, Uid};
use tokengate::token::builders::{self, Issue};
use tokengate::token::{AppCertificate, AppId, codec, v007};

const APP_ID: &str = "970CA35de60c44645bbae8a215061b33";
const CERT: &str = "5CFd2fd1755d40ecb72977518be15d3b";
const ISSUE_TS: u32 = 1_790_000_000;
const SALT: u32 = 12_345_678;

/// The inputs of the benchmarked token: an RTC publisher by uid, a 32-byte channel name.
struct Fixture {
    app_id: AppId,
    certificate: AppCertificate,
    channel: ChannelName,
    who: RtcIdentity,
}

/// Intermediate values of one built token, for the primitive benchmarks.
struct Pieces {
    token: String,
    payload: Vec<u8>,
    signing_info: Vec<u8>,
    compressed: Vec<u8>,
    body: String,
}

fn fixture() -> Option<Fixture> {
    Some(Fixture {
        app_id: AppId::parse(APP_ID).ok()?,
        certificate: AppCertificate::parse(CERT).ok()?,
        channel: ChannelName::parse("7d72365eb983485397e3e3f9d460bdda").ok()?,
        who: RtcIdentity::Uid(Uid::new(2_882_341_273).ok()?),
    })
}

fn build(f: &Fixture) -> Option<String> {
    let issue = Issue {
        app_id: &f.app_id,
        certificate: &f.certificate,
        issue_ts: ISSUE_TS,
        salt: SALT,
    };
    builders::rtc_token(&issue, &f.channel, &f.who, Role::Publisher, 3600, 3600).ok()
}

fn pieces(f: &Fixture) -> Option<Pieces> {
    let token = build(f)?;
    let parsed = v007::parse(&token).ok()?;
    let mut compressed = Vec::new();
    codec::deflate(parsed.payload(), &mut compressed).ok()?;
    Some(Pieces {
        body: token.get(3..)?.to_owned(),
        payload: parsed.payload().to_vec(),
        signing_info: parsed.signing_info().to_vec(),
        compressed,
        token,
    })
}

/// The three HMACs of a token: k1, k2 (the signing key) and the signature.
fn three_hmacs(certificate: &AppCertificate, signing_info: &[u8]) -> [u8; 32] {
    let key = v007::signing_key(certificate, ISSUE_TS, SALT);
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
        return [0; 32];
    };
    mac.update(signing_info);
    mac.finalize().into_bytes().into()
}

fn benches(c: &mut Criterion) {
    let Some((f, p)) = fixture().and_then(|f| pieces(&f).map(|p| (f, p))) else {
        // A broken fixture must fail `cargo test --benches`, not measure nothing.
        eprintln!("the benchmark fixture failed to build");
        std::process::exit(1);
    };
    let mut g = c.benchmark_group("token");

    // Primitives of build.
    g.bench_function("primitive/hmac_x3", |b| {
        b.iter(|| three_hmacs(black_box(&f.certificate), black_box(&p.signing_info)))
    });
    g.bench_function("primitive/deflate_reused", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            codec::deflate(black_box(&p.payload), &mut out).is_ok()
        })
    });
    g.bench_function("primitive/deflate_fresh_encoder", |b| {
        b.iter(|| {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            let _ = z.write_all(black_box(&p.payload));
            z.finish().map(|v| v.len()).unwrap_or_default()
        })
    });
    g.bench_function("primitive/base64_encode", |b| {
        let mut out = String::with_capacity(256);
        b.iter(|| {
            out.clear();
            codec::base64_encode(black_box(&p.compressed), &mut out);
            out.len()
        })
    });

    // Primitives of parse + verify.
    g.bench_function("primitive/base64_decode", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| codec::base64_decode(black_box(&p.body), &mut out).is_ok())
    });
    g.bench_function("primitive/inflate_reused", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| codec::inflate(black_box(&p.compressed), &mut out).is_ok())
    });

    // The operations.
    g.bench_function("build/rtc_publisher_uid", |b| {
        b.iter(|| build(black_box(&f)))
    });
    g.bench_function("parse", |b| {
        b.iter(|| v007::parse(black_box(&p.token)).is_ok())
    });
    g.bench_function("parse_verify", |b| {
        b.iter(|| v007::parse(black_box(&p.token)).is_ok_and(|t| t.verify(&f.certificate)))
    });
    g.finish();
}

criterion_group!(token, benches);
criterion_main!(token);
