//! The `[limits]` section: `check-config` refuses every unusable connection
//! limit naming its key and prints the ones in force, and the README's
//! configuration reference states the real defaults.

use std::process::{Command, Output};

use crate::support::server::{PRIMARY_CERT, SECONDARY_CERT, config_text, test_env};

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

const RULES: &str = r#"
[[rules]]
name = "lobby"
actions = ["rtc"]
channel = "lobby-*"
project = "main"
account_claim = "sub"
"#;

fn config(limits: &str) -> String {
    config_text("http://127.0.0.1:1/jwks", &format!("{limits}\n{RULES}"))
}

fn check_config(text: &str) -> (Output, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokengate.toml");
    std::fs::write(&path, text).unwrap();
    let output = Command::new(BIN)
        .args(["check-config", path.to_str().unwrap()])
        .env_clear()
        .env("TEST_PRIMARY_CERT", PRIMARY_CERT)
        .env("TEST_SECONDARY_CERT", SECONDARY_CERT)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

#[test]
fn check_config_refuses_unusable_connection_limits_naming_the_key() {
    let cases = [
        ("header_read_timeout = \"0s\"", "limits.header_read_timeout"),
        ("header_read_timeout = \"5m\"", "limits.header_read_timeout"),
        ("idle_timeout = \"0s\"", "limits.idle_timeout"),
        ("keepalive_interval = \"0s\"", "limits.keepalive_interval"),
        ("keepalive_timeout = \"0s\"", "limits.keepalive_timeout"),
        ("max_connections = 0", "limits.max_connections"),
        ("admin_max_connections = 0", "limits.admin_max_connections"),
        ("max_header_list_size = 100", "limits.max_header_list_size"),
        ("listen_backlog = 0", "limits.listen_backlog"),
        ("listen_backlog = 100000", "limits.listen_backlog"),
        ("max_connections = -1", "limits.max_connections"),
    ];
    for (line, key) in cases {
        let (output, stdout, stderr) = check_config(&config(&format!("[limits]\n{line}\n")));
        assert_eq!(output.status.code(), Some(64), "{line}: {stdout}{stderr}");
        assert!(stderr.contains(&format!("{key}:")), "{line}: {stderr}");
    }
    let (output, stdout, stderr) = check_config(&config(
        "[limits]\nmax_connections = 12\nadmin_max_connections = 3\nlisten_backlog = 9\n",
    ));
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("connections: grpc max 12, admin max 3, backlog 9, header read timeout 5s"),
        "{stdout}"
    );
}

#[test]
fn the_readme_limits_block_states_the_defaults() {
    let readme = include_str!("../../README.md");
    let reference = readme
        .split("\n## Configuration reference\n")
        .nth(1)
        .unwrap();
    let block: String = reference
        .lines()
        .skip_while(|line| !line.starts_with("[limits]"))
        .take_while(|line| !line.trim().is_empty())
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(block.lines().count() > 5, "{block}");
    let documented = tokengate::config::load(&config(&block), &test_env).unwrap();
    let defaults = tokengate::config::load(&config(""), &test_env).unwrap();
    assert_eq!(
        format!("{:?}", documented.limits()),
        format!("{:?}", defaults.limits())
    );
    assert_eq!(documented.limiter(), defaults.limiter());
    assert_eq!(
        documented.rate_limits().max_in_flight(),
        defaults.rate_limits().max_in_flight()
    );
}
