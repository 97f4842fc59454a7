//! Forward authentication through real proxies: Debian's nginx
//! (`auth_request`) and Caddy (`forward_auth` with `copy_headers`), each run
//! on loopback from its snippet under `deploy/forward-auth/` (see
//! `support::proxies`), in front of tokengate's forward-auth listener
//! (configured from the snippet's tokengate fragment) and an upstream app
//! that records every request it receives. What the client sees and what
//! the app receives are both asserted: the app gets a token that verifies
//! for the channel in the path, never a header the client forged, and is
//! never reached on a denial.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::support;
use support::authz::{self, ext_authz_section};
use support::fixtures::ROOMS_AND_WEBINARS;
use support::proxies::{self, Proxy, snippet_path, substitute};
use support::server::{APP_ID, PRIMARY_CERT, TestServer};
use support::{FactServer, Recorded, Reply};
use tokengate::token::services::ServiceKind;
use tokengate::token::{AppCertificate, v007};

/// Every header tokengate owns upstream (the defaults).
const OUR_HEADERS: [&str; 5] = [
    "x-agora-token",
    "x-agora-uid",
    "x-agora-account",
    "x-agora-expires-at",
    "x-agora-rule",
];

/// tokengate with the test routes and the `[forward_auth]` of
/// deploy/forward-auth/`fragment` on loopback, and the recording app.
async fn start(fragment: &str) -> (TestServer, SocketAddr, FactServer) {
    let text = std::fs::read_to_string(snippet_path(fragment)).unwrap();
    let section = substitute(
        fragment,
        &text,
        &[("listen = \"0.0.0.0:9191\"", "listen = \"127.0.0.1:0\"", 1)],
    );
    let server = authz::start(
        ROOMS_AND_WEBINARS,
        &format!("{}\n{section}", ext_authz_section("")),
    )
    .await;
    server.wait_ready().await;
    let forward_auth = server
        .forward_auth
        .expect("the forward-auth listener is bound");
    let app = FactServer::start().await;
    app.set_default(Reply::raw(200, "text/plain", "from the app"));
    (server, forward_auth, app)
}

/// What the client got.
#[derive(Debug)]
struct Answer {
    status: u16,
    www_authenticate: Option<String>,
    body: String,
}

impl Answer {
    /// The status and the JSON body's only field, `error`.
    fn denial(&self) -> (u16, String) {
        let json: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("the body is JSON ({e}): {:?}", self.body));
        let object = json.as_object().expect("a JSON object");
        assert_eq!(object.len(), 1, "{}", self.body);
        (
            self.status,
            json["error"].as_str().expect("error").to_owned(),
        )
    }
}

/// `GET path` through `proxy` with `headers`.
async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Answer {
    let client = reqwest::Client::new();
    let mut request = client.get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", proxy.name, proxy.log()));
    let status = response.status().as_u16();
    let www_authenticate = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.text().await.unwrap();
    Answer {
        status,
        www_authenticate,
        body,
    }
}

/// The requests the app received for `path`.
fn received(app: &FactServer, path: &str) -> Vec<Recorded> {
    app.requests()
        .into_iter()
        .filter(|r| r.path == path)
        .collect()
}

/// The client's forged copies of the headers tokengate owns that are only
/// ever answers. (`x-agora-uid` and `x-agora-account` are also requests the
/// rules judge: they are forged on the public page, where nothing judges.)
const FORGED: [(&str, &str); 3] = [
    ("x-agora-token", "007forged"),
    ("x-agora-expires-at", "4102444800"),
    ("x-agora-rule", "admin"),
];

/// Asserts that a header the client forged did not reach the app: each of
/// ours is absent, or what tokengate granted (never the forged value).
fn assert_nothing_forged(label: &str, request: &Recorded) {
    for (name, forged) in FORGED {
        let values: Vec<&str> = request
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        assert!(
            values.len() <= 1 && !values.contains(&forged),
            "{label}: the app received {name}: {values:?}"
        );
    }
}

/// Every scenario of issue 17 through `proxy`.
async fn scenarios(proxy: &Proxy, server: &TestServer, app: &FactServer) {
    let name = proxy.name;
    let alice = format!(
        "Bearer {}",
        server.mint("alice", json!({"teams": ["blue"], "agora_uid": 4242}))
    );
    let with_forged = |jwt: Option<&str>| {
        let mut headers: Vec<(&str, String)> =
            FORGED.iter().map(|(n, v)| (*n, (*v).to_owned())).collect();
        if let Some(jwt) = jwt {
            headers.push(("authorization", jwt.to_owned()));
        }
        headers
    };
    let send = |path: &'static str, headers: Vec<(&'static str, String)>| async move {
        let borrowed: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        get(proxy, path, &borrowed).await
    };

    // Allowed: the app gets a token for the channel in the path, bound to
    // alice's uid, and none of the client's forged headers, nor her JWT.
    let path = "/rooms/team-blue-standup/join";
    let answer = send(path, with_forged(Some(&alice))).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "from the app"),
        "{name}: {answer:?}\n{}",
        proxy.log()
    );
    let requests = received(app, path);
    assert_eq!(requests.len(), 1, "{name}: {requests:?}");
    let request = &requests[0];
    let label = format!("{name}: allowed");
    let token = request.header("x-agora-token").expect("a token upstream");
    let parsed = v007::parse(token).unwrap_or_else(|e| panic!("{label}: {e:?}"));
    assert!(
        parsed.verify(&AppCertificate::parse(PRIMARY_CERT).unwrap()),
        "{label}: the token verifies with the project certificate"
    );
    assert_eq!(parsed.token.app_id, APP_ID.as_bytes(), "{label}");
    let ServiceKind::Rtc { channel_name, uid } = &parsed.token.services[0].kind else {
        panic!("{label}: not an RTC token");
    };
    assert_eq!(channel_name, b"team-blue-standup", "{label}");
    assert_eq!(uid, b"4242", "{label}");
    assert_eq!(request.header("x-agora-uid"), Some("4242"), "{label}");
    assert_eq!(
        request.header("x-agora-rule"),
        Some("team rooms"),
        "{label}"
    );
    assert_eq!(
        request.header("x-agora-expires-at"),
        Some(parsed.token.expires_at().to_string().as_str()),
        "{label}"
    );
    // No account is bound: the client's is gone (Caddy 2.6 sets an empty one).
    assert!(
        request.header("x-agora-account").is_none_or(str::is_empty),
        "{label}: {:?}",
        request.header("x-agora-account")
    );
    assert_nothing_forged(&label, request);
    assert_eq!(
        request.header("authorization"),
        None,
        "{label}: the JWT is stripped"
    );

    // Denials reach the client with tokengate's status and JSON body, and
    // the app never sees the request.
    let denials = [
        ("/rooms/team-blue-standup/join", None, (401, "missing")),
        (
            "/rooms/team-red-standup/join",
            Some(alice.as_str()),
            (403, "no_matching_rule"),
        ),
        ("/admin", Some(alice.as_str()), (403, "no_matching_route")),
    ];
    for (path, jwt, (status, reason)) in denials {
        let answer = send(path, with_forged(jwt)).await;
        let label = format!("{name}: {path} with a JWT: {}", jwt.is_some());
        assert_eq!(
            answer.denial(),
            (status, reason.to_owned()),
            "{label}\n{}",
            proxy.log()
        );
        if status == 401 {
            assert!(
                answer
                    .www_authenticate
                    .as_deref()
                    .is_some_and(|v| v.starts_with("Bearer")),
                "{label}: {answer:?}"
            );
        }
    }
    assert_eq!(
        received(app, "/rooms/team-red-standup/join"),
        vec![],
        "{name}"
    );
    assert_eq!(received(app, "/admin"), vec![], "{name}");
    assert_eq!(
        received(app, "/rooms/team-blue-standup/join").len(),
        1,
        "{name}: the 401 reached the app"
    );

    // A pass-through route reaches the app without a JWT and without any
    // token header, forged or ours.
    let path = "/public/index.html";
    let mut headers = with_forged(None);
    headers.extend([
        ("x-agora-uid", "1".to_owned()),
        ("x-agora-account", "root".to_owned()),
    ]);
    let answer = send(path, headers).await;
    assert_eq!(answer.status, 200, "{name}: {answer:?}");
    let requests = received(app, path);
    assert_eq!(requests.len(), 1, "{name}");
    for header in OUR_HEADERS {
        assert_eq!(
            requests[0].header(header),
            None,
            "{name}: {header} reached the app on a public page"
        );
    }
    assert_eq!(app.requests().len(), 2, "{name}: {:?}", app.requests());
}

#[tokio::test]
async fn nginx_auth_request_passes_the_token_upstream_and_relays_denials() {
    let (server, forward_auth, app) = start("tokengate-nginx.toml").await;
    let proxy = proxies::nginx(forward_auth, app.addr());
    scenarios(&proxy, &server, &app).await;
    // Stopping the test's nginx stops its workers too: none is left running.
    let workers = proxy.children();
    assert!(!workers.is_empty(), "nginx runs workers");
    drop(proxy);
    for pid in workers {
        let state = proxies::process_state(pid);
        assert!(
            state.is_none_or(|(state, _)| state == 'Z'),
            "nginx worker {pid} outlived its master: {state:?}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn caddy_forward_auth_passes_the_token_upstream_and_relays_denials() {
    let (server, forward_auth, app) = start("tokengate-x-forwarded.toml").await;
    let proxy = proxies::caddy(forward_auth, app.addr());
    scenarios(&proxy, &server, &app).await;
    drop(proxy);
    server.shutdown().await;
}
