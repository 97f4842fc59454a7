//! The fact server helper (`tests/support/fact_server.rs`) against a real
//! reqwest client: the HTTP-fact tests trust it to answer what was scripted,
//! to record requests byte for byte (the raw, percent-encoded path above
//! all), to delay, to stream huge bodies rather than buffer them, and to
//! stop and come back on the same port. Each of those is checked here so a
//! broken helper fails here, not as a puzzling fact test.

use crate::support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{FactServer, Reply, fact_server::HUGE_CHUNK};
use tokio::time::timeout;

/// The most any wait in these tests may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A client that opens a new connection per request, for the stop / restart
/// test, so a pooled connection to the old listener cannot blur the result.
fn unpooled() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = timeout(PATIENCE, client.get(url).send())
        .await
        .unwrap()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn scripted_json_is_answered_and_counted_per_path() {
    let server = FactServer::start().await;
    server.respond(
        "/rooms/r1",
        Reply::json(200, json!({"members": ["alice", "bob"]})),
    );
    server.respond("/rooms/r2", Reply::json(503, json!({"error": "busy"})));
    let client = client();

    for _ in 0..2 {
        let (status, body) = get_json(&client, &format!("{}/rooms/r1", server.url())).await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({"members": ["alice", "bob"]}));
    }
    let (status, body) = get_json(&client, &format!("{}/rooms/r2?x=1", server.url())).await;
    assert_eq!((status, body), (503, json!({"error": "busy"})));

    assert_eq!(server.count("/rooms/r1"), 2);
    assert_eq!(
        server.count("/rooms/r2"),
        1,
        "the query is not part of the path"
    );
    assert_eq!(server.count("/rooms/r3"), 0);
    assert_eq!(server.requests().len(), 3);

    server.reset_counts();
    assert_eq!(server.count("/rooms/r1"), 0);
    assert!(server.requests().is_empty());
    // The script outlives the reset.
    let (status, _) = get_json(&client, &format!("{}/rooms/r1", server.url())).await;
    assert_eq!(status, 200);
    assert_eq!(server.count("/rooms/r1"), 1);
}

#[tokio::test]
async fn requests_are_recorded_with_raw_path_query_headers_and_body() {
    let server = FactServer::start().await;
    server.respond("/rooms/a%2Fb%20c", Reply::json(200, json!({"ok": true})));
    let client = client();

    let response = timeout(
        PATIENCE,
        client
            .post(format!("{}/rooms/a%2Fb%20c?who=al%20ice&n=1", server.url()))
            .header("Authorization", "Bearer s3cret")
            .header("X-Request-Id", "Req-42")
            .json(&json!({"channel": "a/b c"}))
            .send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        response.status(),
        200,
        "the encoded path matched its script exactly"
    );

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let seen = &requests[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/rooms/a%2Fb%20c");
    assert_eq!(seen.query.as_deref(), Some("who=al%20ice&n=1"));
    assert_eq!(seen.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(
        seen.header("X-REQUEST-ID"),
        Some("Req-42"),
        "values keep their case"
    );
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert!(
        seen.headers
            .iter()
            .all(|(n, _)| *n == n.to_ascii_lowercase()),
        "header names are lowercase: {:?}",
        seen.headers
    );
    assert_eq!(seen.json(), Some(json!({"channel": "a/b c"})));

    // A decoded path is a different path: no script, the default 404.
    let (status, _) = get_json(&client, &format!("{}/rooms/a/b%20c", server.url())).await;
    assert_eq!(status, 404);
    assert_eq!(server.count("/rooms/a%2Fb%20c"), 1);
    assert_eq!(server.count("/rooms/a/b%20c"), 1);
}

#[tokio::test]
async fn unknown_paths_get_the_default_which_can_be_replaced() {
    let server = FactServer::start().await;
    let client = client();

    let (status, body) = get_json(&client, &format!("{}/nothing/here", server.url())).await;
    assert_eq!((status, body), (404, json!({"error": "not found"})));

    server.set_default(Reply::raw(500, "text/plain", "boom").header("Retry-After", "3"));
    let response = timeout(
        PATIENCE,
        client.get(format!("{}/nothing/here", server.url())).send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.headers()["retry-after"], "3");
    assert_eq!(response.text().await.unwrap(), "boom");
    assert_eq!(server.count("/nothing/here"), 2);
}

#[tokio::test]
async fn one_shot_replies_come_first_then_the_standing_one() {
    let server = FactServer::start().await;
    server.respond("/f", Reply::json(200, json!({"v": "standing"})));
    server.respond_once("/f", Reply::json(503, json!({"v": "first"})));
    server.respond_once("/f", Reply::json(502, json!({"v": "second"})));
    let client = client();
    let url = format!("{}/f", server.url());

    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(get_json(&client, &url).await);
    }
    assert_eq!(
        seen,
        vec![
            (503, json!({"v": "first"})),
            (502, json!({"v": "second"})),
            (200, json!({"v": "standing"})),
            (200, json!({"v": "standing"})),
        ]
    );
}

#[tokio::test]
async fn a_delayed_reply_is_not_answered_early_but_is_answered() {
    let server = FactServer::start().await;
    server.respond(
        "/slow",
        Reply::json(200, json!({"late": true})).delay(Duration::from_millis(500)),
    );
    let client = client();
    let url = format!("{}/slow", server.url());

    let early = timeout(Duration::from_millis(100), client.get(&url).send()).await;
    assert!(
        early.is_err(),
        "answered within 100 ms despite a 500 ms delay"
    );

    let started = std::time::Instant::now();
    let (status, body) = get_json(&client, &url).await;
    assert_eq!((status, body), (200, json!({"late": true})));
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(
        server.count("/slow"),
        2,
        "the abandoned request is recorded too"
    );
}

#[tokio::test]
async fn huge_replies_are_valid_json_arrays_of_the_exact_size() {
    let server = FactServer::start().await;
    let client = client();
    let sizes = [
        2,
        3,
        4,
        5,
        HUGE_CHUNK - 1,
        HUGE_CHUNK,
        HUGE_CHUNK + 1,
        HUGE_CHUNK + 2,
        1_000_001,
    ];
    for size in sizes {
        let path = format!("/huge/{size}");
        server.respond(&path, Reply::huge(size));
        let response = timeout(
            PATIENCE,
            client.get(format!("{}{path}", server.url())).send(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.content_length(), None, "chunked, not declared");
        let body = timeout(PATIENCE, response.bytes()).await.unwrap().unwrap();
        assert_eq!(body.len(), size);
        let parsed: Vec<Value> = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("size {size}: not a JSON array: {e}"));
        assert_eq!(parsed.len(), (size - 1) / 2, "size {size}");
    }
    let total: usize = sizes.iter().sum();
    assert_eq!(server.streamed_bytes(), total as u64);

    // Declared: the same body with Content-Length.
    server.respond("/declared", Reply::huge(100_000).declared_length());
    let response = timeout(
        PATIENCE,
        client.get(format!("{}/declared", server.url())).send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.content_length(), Some(100_000));
    let body = timeout(PATIENCE, response.bytes()).await.unwrap().unwrap();
    assert_eq!(body.len(), 100_000);
}

#[tokio::test]
async fn a_huge_reply_is_streamed_so_a_client_can_stop_at_a_bound() {
    const SIZE: usize = 256 * 1024 * 1024;
    const BOUND: usize = 64 * 1024;
    let server = FactServer::start().await;
    server.respond("/huge", Reply::huge(SIZE));
    let client = client();

    let mut response = timeout(
        PATIENCE,
        client.get(format!("{}/huge", server.url())).send(),
    )
    .await
    .unwrap()
    .unwrap();
    let mut read = Vec::new();
    while read.len() < BOUND {
        let chunk = timeout(PATIENCE, response.chunk())
            .await
            .unwrap()
            .unwrap()
            .expect("the body ended before the bound");
        read.extend_from_slice(&chunk);
    }
    assert!(read.starts_with(b"[0,0,"));
    // The server only generated what the socket buffers could take ahead of
    // the reader: a server that buffered the reply would be at SIZE here.
    let streamed = server.streamed_bytes();
    assert!(
        streamed < (SIZE / 4) as u64,
        "{streamed} of {SIZE} bytes generated while the client had read {}",
        read.len()
    );
    drop(response);

    // Dropping the response closed the connection, and the server noticed:
    // it still answers, and a new small fetch works.
    server.respond("/small", Reply::json(200, json!([1])));
    let (status, body) = get_json(&client, &format!("{}/small", server.url())).await;
    assert_eq!((status, body), (200, json!([1])));
}

#[tokio::test]
async fn stop_refuses_connections_and_restart_serves_the_same_port_and_script() {
    let mut server = FactServer::start().await;
    server.respond("/f", Reply::json(200, json!({"up": true})));
    let client = unpooled();
    let url = format!("{}/f", server.url());
    let addr = server.addr();

    assert_eq!(get_json(&client, &url).await.0, 200);

    server.stop().await;
    let down = timeout(PATIENCE, client.get(&url).send()).await.unwrap();
    let error = down.unwrap_err();
    assert!(error.is_connect(), "expected a refused connection: {error}");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the port still accepts after stop"
    );

    server.restart().await;
    assert_eq!(server.url(), url.trim_end_matches("/f"));
    let (status, body) = get_json(&client, &url).await;
    assert_eq!((status, body), (200, json!({"up": true})));
    assert_eq!(server.count("/f"), 2, "the log spans the restart");
}
