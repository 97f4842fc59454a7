//! Writes the seed corpora under `.fuzz/corpus/<target>/` from Agora's token
//! vectors (`../shared/vectors`), the example policy, JWTs minted with the
//! fixed test keys of `tokengate_fuzz`, JWKS documents, Envoy-shaped
//! requests and encoded protobuf requests.
//!
//! Run from the repository root: `cargo run --manifest-path .fuzz/Cargo.toml --example seeds`.
//! It replaces the corpora it writes, and is deterministic except for the
//! ES256 and PS256 signatures, whose nonces and salts are random.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prost::Message;
use prost_types::Duration;
use serde_json::{Value, json};
use tokengate::grpc::pb;
use tokengate_fuzz::{AUDIENCE, HS_ISSUER, HS_SECRET, JWKS_ISSUER, NOW, jwks, signing_keys};

type Seeds = Vec<(String, Vec<u8>)>;

fn main() {
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = fuzz_dir.join("..");
    let corpus = fuzz_dir.join("corpus");
    let (v007, v006) = tokens(&root.join("../shared/vectors"));
    write(&corpus.join("token_v007"), v007);
    write(&corpus.join("token_v006"), v006);
    write(&corpus.join("jwt"), jwts());
    write(&corpus.join("jwks"), jwks_documents());
    write(&corpus.join("policy"), policies(&root));
    write(&corpus.join("ext_authz"), http_requests());
    write(&corpus.join("grpc_request"), grpc_requests());
}

/// Replaces `dir`'s files with `seeds`.
fn write(dir: &PathBuf, seeds: Seeds) {
    if dir.exists() {
        fs::remove_dir_all(dir).expect("remove the old corpus");
    }
    fs::create_dir_all(dir).expect("create the corpus folder");
    let mut seen = BTreeSet::new();
    for (name, bytes) in seeds {
        if seen.insert(bytes.clone()) {
            let name: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            fs::write(dir.join(name), bytes).expect("write a seed");
        }
    }
    println!("{}: {} seeds", dir.display(), seen.len());
}

/// Every token string in the vectors, split by version.
fn tokens(vectors: &Path) -> (Seeds, Seeds) {
    let mut found: Vec<(String, String)> = Vec::new();
    for file in ["agora-tokens.json", "agora-tokens-invalid.json"] {
        let text = fs::read_to_string(vectors.join(file)).expect("read the vectors");
        let doc: Value = serde_json::from_str(&text).expect("vectors are json");
        collect_tokens(&doc, "", &mut found);
    }
    let (mut v007, mut v006) = (Vec::new(), Vec::new());
    for (i, (id, token)) in found.into_iter().enumerate() {
        let name = format!("{i:03}-{id}");
        if token.starts_with("006") {
            v006.push((name, token.into_bytes()));
        } else {
            v007.push((name, token.into_bytes()));
        }
    }
    (v007, v006)
}

/// Strings that look like tokens anywhere in the document, with the nearest `id`.
fn collect_tokens(value: &Value, id: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            let id = map.get("id").and_then(Value::as_str).unwrap_or(id);
            for (key, v) in map {
                match v {
                    Value::String(s) if key.contains("token") && (s.starts_with("00")) => {
                        out.push((id.to_owned(), s.clone()));
                    }
                    _ => collect_tokens(v, id, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_tokens(v, id, out)),
        _ => {}
    }
}

/// The claims a valid token for the fuzz issuers carries.
fn claims(iss: &str) -> Value {
    json!({
        "iss": iss,
        "sub": "alice",
        "aud": AUDIENCE,
        "exp": NOW + 3600,
        "iat": NOW - 60,
        "nbf": NOW - 60,
        "email": "alice@example.com",
        "scope": "tokens:mint openid",
        "teams": ["blue", "red"],
        "agora_uid": 7,
    })
}

fn sign(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).expect("sign a seed jwt")
}

/// A compact JWS from raw header and payload JSON text and a raw signature.
fn raw_jwt(header: &str, payload: &str, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// `authorization` values: valid tokens of every key, and one per refusal.
fn jwts() -> Seeds {
    let mut seeds = Seeds::new();
    let mut add = |name: &str, jwt: String| {
        seeds.push((name.to_owned(), format!("Bearer {jwt}").into_bytes()));
    };
    let keys = signing_keys();
    for key in &keys {
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.to_owned());
        add(
            &format!("valid-{}", key.kid),
            sign(&header, &claims(JWKS_ISSUER), &key.encoding),
        );
    }
    let rsa = &keys[2];
    let mut ps = Header::new(Algorithm::PS256);
    ps.kid = Some(rsa.kid.to_owned());
    add(
        "valid-ps256-on-rsa",
        sign(&ps, &claims(JWKS_ISSUER), &rsa.encoding),
    );
    let hs = EncodingKey::from_secret(HS_SECRET.as_bytes()).expect("an hs256 key");
    add(
        "valid-hs256",
        sign(&Header::new(Algorithm::HS256), &claims(HS_ISSUER), &hs),
    );

    let ed = &keys[0];
    let mut ed_header = Header::new(ed.alg);
    ed_header.kid = Some(ed.kid.to_owned());
    let variant = |f: &dyn Fn(&mut Value)| {
        let mut c = claims(JWKS_ISSUER);
        f(&mut c);
        sign(&ed_header, &c, &ed.encoding)
    };
    add("expired", variant(&|c| c["exp"] = json!(NOW - 3600)));
    add("not-yet-valid", variant(&|c| c["nbf"] = json!(NOW + 3600)));
    add(
        "issued-in-future",
        variant(&|c| c["iat"] = json!(NOW + 3600)),
    );
    add(
        "fractional-dates",
        variant(&|c| c["exp"] = json!(NOW as f64 + 0.5)),
    );
    add("aud-array", variant(&|c| c["aud"] = json!(["x", AUDIENCE])));
    add("bad-aud", variant(&|c| c["aud"] = json!("someone-else")));
    add("iss-array", variant(&|c| c["iss"] = json!([JWKS_ISSUER])));
    add(
        "no-email",
        variant(&|c| {
            c.as_object_mut()
                .map(|m| m.remove("email"))
                .map_or((), |_| ())
        }),
    );
    add(
        "no-sub",
        variant(&|c| {
            c.as_object_mut()
                .map(|m| m.remove("sub"))
                .map_or((), |_| ())
        }),
    );
    add(
        "unknown-issuer",
        variant(&|c| c["iss"] = json!("https://elsewhere.example")),
    );
    add(
        "nested-claims",
        variant(&|c| c["ctx"] = json!({"a": [1, {"b": null}], "c": 1e300})),
    );
    let mut unknown_kid = ed_header.clone();
    unknown_kid.kid = Some("rotated-2".to_owned());
    add(
        "unknown-kid",
        sign(&unknown_kid, &claims(JWKS_ISSUER), &ed.encoding),
    );
    let mut no_kid = ed_header.clone();
    no_kid.kid = None;
    add("no-kid", sign(&no_kid, &claims(JWKS_ISSUER), &ed.encoding));
    add(
        "hs256-for-asymmetric-issuer",
        sign(&Header::new(Algorithm::HS256), &claims(JWKS_ISSUER), &hs),
    );

    let payload = claims(JWKS_ISSUER).to_string();
    add("alg-none", raw_jwt(r#"{"alg":"none"}"#, &payload, b""));
    add(
        "crit",
        raw_jwt(
            r#"{"alg":"EdDSA","kid":"ed-1","crit":["exp"]}"#,
            &payload,
            &[0; 64],
        ),
    );
    add(
        "b64-false",
        raw_jwt(
            r#"{"alg":"EdDSA","kid":"ed-1","b64":false}"#,
            &payload,
            &[0; 64],
        ),
    );
    add(
        "kid-number",
        raw_jwt(r#"{"alg":"EdDSA","kid":7}"#, &payload, &[0; 64]),
    );
    add(
        "duplicate-alg",
        raw_jwt(r#"{"alg":"EdDSA","alg":"HS256"}"#, &payload, &[0; 64]),
    );
    add(
        "duplicate-claim",
        raw_jwt(
            r#"{"alg":"EdDSA","kid":"ed-1"}"#,
            &format!(
                r#"{{"iss":"{JWKS_ISSUER}","sub":"a","sub":"b","aud":"{AUDIENCE}","exp":{}}}"#,
                NOW + 60
            ),
            &[0; 64],
        ),
    );
    add(
        "bad-signature",
        raw_jwt(r#"{"alg":"ES256","kid":"ec-1"}"#, &payload, &[1; 64]),
    );
    seeds.push((
        "not-bearer".into(),
        b"Basic YWxhZGRpbjpvcGVuc2VzYW1l".to_vec(),
    ));
    seeds.push((
        "two-segments".into(),
        b"bearer eyJhbGciOiJIUzI1NiJ9.e30".to_vec(),
    ));
    seeds
}

/// JWKS documents: the fixture's, and ones with keys identity must drop or refuse.
fn jwks_documents() -> Seeds {
    let doc: Value = serde_json::from_str(&jwks()).expect("the fixture jwks");
    let keys = doc["keys"].as_array().cloned().unwrap_or_default();
    let mut seeds: Seeds = vec![("fixture".into(), jwks().into_bytes())];
    let mut add =
        |name: &str, value: Value| seeds.push((name.to_owned(), value.to_string().into_bytes()));
    for (i, key) in keys.iter().enumerate() {
        add(&format!("single-{i}"), json!({ "keys": [key] }));
        let mut enc = key.clone();
        enc["use"] = json!("enc");
        add(&format!("use-enc-{i}"), json!({ "keys": [enc] }));
        let mut wrong_alg = key.clone();
        wrong_alg["alg"] = json!("HS256");
        add(
            &format!("alg-mismatch-{i}"),
            json!({ "keys": [wrong_alg, key] }),
        );
        let mut no_kid = key.clone();
        no_kid.as_object_mut().map(|m| m.remove("kid"));
        add(&format!("no-kid-{i}"), json!({ "keys": [no_kid] }));
    }
    add("same-kid-twice", json!({ "keys": [keys[0], keys[0]] }));
    add(
        "oct",
        json!({ "keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}] }),
    );
    add(
        "unknown-kty",
        json!({ "keys": [{"kty": "XYZ", "kid": "x"}] }),
    );
    add(
        "ec-p384-no-alg",
        json!({ "keys": [{"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}] }),
    );
    add("empty", json!({ "keys": [] }));
    add("not-a-list", json!({ "keys": {} }));
    seeds
}

/// Policy files: the example policy, the dev rules and a few rules of every kind.
fn policies(root: &Path) -> Seeds {
    let mut seeds = Seeds::new();
    for name in ["policy.toml", "dev-rules.toml"] {
        let text = fs::read(root.join("deploy/examples").join(name)).expect("read an example");
        seeds.push((name.to_owned(), text));
    }
    let snippets: [(&str, &str); 4] = [
        (
            "team-rooms",
            r#"
[[rules]]
name = "team rooms"
actions = ["rtc"]
issuer = "https://idp.fuzz.example"
channel = "team-{team}-*"
condition = 'captures.team in claims.teams'
max_role = "publisher"
uid_claim = "agora_uid"
default_ttl = "1h"
max_ttl = "4h"
"#,
        ),
        (
            "rtm-permissions",
            r#"
[[rules]]
name = "rtm"
actions = ["rtm"]
channel = "room-{id}"
account_claim = "sub"
rtm_permissions = [{ resource = "{id}", access = "publish" }]
"#,
        ),
        (
            "deny-and-wildcard",
            r#"
[[rules]]
name = "suspended"
effect = "deny"
actions = ["rtc", "rtm", "chat"]
condition = 'has(claims.status) && claims.status == "suspended"'

[[rules]]
name = "backend"
actions = ["rtc", "rtm", "chat"]
condition = '"tokens:mint" in caller.scopes && now < caller.expires_at'
project = "main"
caller_chooses_identity = true
allow_wildcard_uid = true
allow_app_token = true
"#,
        ),
        (
            "debug",
            r#"
[[rules]]
name = "debug"
actions = ["inspect", "explain"]
condition = 'request.action == "inspect" || size(channel) > 3'
"#,
        ),
    ];
    for (name, text) in snippets {
        seeds.push((name.to_owned(), text.as_bytes().to_vec()));
    }
    seeds
}

/// Envoy-shaped requests: method, path, then headers, one per line.
fn http_requests() -> Seeds {
    [
        (
            "join",
            "POST\n/rooms/team-blue/join\nauthorization: Bearer x",
        ),
        (
            "join-query",
            "POST\n/rooms/team%20blue/join?x=1#f\nx-agora-role: subscriber",
        ),
        ("watch", "GET\n/rooms/lobby-1/watch\n"),
        ("as-uid", "GET\n/rooms/r1/as/42\nx-agora-role: publisher"),
        ("as-uid-zero", "GET\n/rooms/r1/as/0"),
        (
            "uid-and-account",
            "GET\n/rooms/r1/as/7\nx-agora-account: bob",
        ),
        ("webinar", "GET\n/webinars/w-1/attend/bob%40example.com"),
        ("chat", "PUT\n/chat/anything/login\nx-agora-account: carol"),
        (
            "rtm-header-channel",
            "POST\n/rtm/login\nx-agora-channel: room-9\nx-agora-uid: 12",
        ),
        ("wildcard-channel", "POST\n/rtm/login\nx-agora-channel: *"),
        ("public", "GET\n/public/a/b/c.css"),
        ("dot-segment", "GET\n/public/../rooms/x/join"),
        ("encoded-slash", "POST\n/rooms/a%2Fb/join"),
        ("empty-segment", "POST\n/rooms//join"),
        ("bad-escape", "POST\n/rooms/%zz/join"),
        ("no-route", "DELETE\n/nothing/here"),
    ]
    .into_iter()
    .map(|(name, text)| (name.to_owned(), text.as_bytes().to_vec()))
    .collect()
}

fn minutes(n: i64) -> Option<Duration> {
    Some(Duration {
        seconds: n * 60,
        nanos: 0,
    })
}

/// Encoded requests of every message the token API converts.
fn grpc_requests() -> Seeds {
    use pb::explain_access_request::Request as Wanted;
    use pb::inspect_token_request::ExpectedIdentity;
    use pb::issue_rtc_token_request::Identity;
    let lifetimes = Some(pb::Lifetimes {
        token: minutes(60),
        join: minutes(30),
        publish: Some(Duration {
            seconds: -1,
            nanos: 500,
        }),
    });
    let rtc = pb::IssueRtcTokenRequest {
        channel: "team-blue".into(),
        identity: Some(Identity::Uid(42)),
        role: pb::Role::Publisher as i32,
        lifetimes: lifetimes.clone(),
        project: "main".into(),
        with_rtm: true,
    };
    let rtc_account = pb::IssueRtcTokenRequest {
        channel: "*".into(),
        identity: Some(Identity::Account("bob".into())),
        role: 99,
        ..Default::default()
    };
    let rtm = pb::IssueRtmTokenRequest {
        user_id: "bob".into(),
        lifetime: minutes(10),
        project: "main".into(),
        channel: "room-1".into(),
    };
    let chat = pb::IssueChatTokenRequest {
        user_id: String::new(),
        app_token: true,
        lifetime: Some(Duration {
            seconds: 86_401,
            nanos: 0,
        }),
        project: String::new(),
    };
    let renew = pb::RenewTokenRequest {
        token: "007eJxTYBBbsMMnKq7p9Hf".into(),
        lifetimes,
        channel: "team-blue".into(),
    };
    let inspect = pb::InspectTokenRequest {
        token: "006970CA35de60c44645bbae8a215061b33IACV0fZU".into(),
        expected_channel: "7d72365eb983485397e3e3f9d460bdda".into(),
        expected_identity: Some(ExpectedIdentity::ExpectedUid(2_882_341_273)),
    };
    let inspect_account = pb::InspectTokenRequest {
        expected_identity: Some(ExpectedIdentity::ExpectedAccount("bob".into())),
        ..Default::default()
    };
    vec![
        ("rtc", rtc.encode_to_vec()),
        ("rtc-account", rtc_account.encode_to_vec()),
        ("rtm", rtm.encode_to_vec()),
        ("chat", chat.encode_to_vec()),
        ("renew", renew.encode_to_vec()),
        ("inspect", inspect.encode_to_vec()),
        ("inspect-account", inspect_account.encode_to_vec()),
        (
            "explain-rtc",
            pb::ExplainAccessRequest {
                request: Some(Wanted::Rtc(rtc)),
            }
            .encode_to_vec(),
        ),
        (
            "explain-rtm",
            pb::ExplainAccessRequest {
                request: Some(Wanted::Rtm(rtm)),
            }
            .encode_to_vec(),
        ),
        (
            "explain-chat",
            pb::ExplainAccessRequest {
                request: Some(Wanted::Chat(chat)),
            }
            .encode_to_vec(),
        ),
    ]
    .into_iter()
    .map(|(name, bytes)| (name.to_owned(), bytes))
    .collect()
}
