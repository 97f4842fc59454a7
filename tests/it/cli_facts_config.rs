//! `tokengate check-config` on `[databases.<name>]` and `[[facts]]`, through
//! the real binary: every mistake an operator can make in them exits 64 and
//! names the exact key (and why), so a bad fact never reaches a running
//! server; a good config prints what it will query, and never a password
//! or a secret.
//!
//! Kept apart from `cli_config.rs` because these cases need files of their
//! own (a password file, a CA bundle, a file that is not one); the binary
//! runner and the base config are `cli_config.rs`'s.

use std::path::{Path, PathBuf};

use crate::cli_config::{EXAMPLE_ENV, assert_no_certificate, base_config, run, text};
use crate::support::certs::Ca;

/// The database password, in its file: never printed.
const DB_PASSWORD: &str = "pw-hunter2-database";
/// A password written into a database URL, refused: never echoed either.
const URL_PASSWORD: &str = "pw-in-the-url-9c1e";
/// The HTTP fact's secret, from the environment: never printed.
const HTTP_SECRET: &str = "tok-s3cret-flag-service";
/// A password written into an HTTP fact's URL, refused: never echoed either.
const HTTP_URL_PASSWORD: &str = "pw-http-userinfo-4b7d";

/// The files the cases name, in a folder of their own.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db-password"), format!("{DB_PASSWORD}\n")).unwrap();
        std::fs::write(dir.path().join("ca.pem"), Ca::new("facts test CA").pem()).unwrap();
        std::fs::write(dir.path().join("not-a-ca.pem"), "just some text\n").unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn display(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// The base config with a database, a postgres fact (`facts[0]`), an
    /// http fact (`facts[1]`) and a rule reading both (`rules[1]`, after
    /// the base config's lobby).
    fn config(&self) -> String {
        base_config()
            + &format!(
                r#"
[databases.main]
url = "postgres://tokengate@127.0.0.1:5432/app"
password_file = "{password}"

[[facts]]
name = "membership"
kind = "postgres"
database = "main"
query = "SELECT role FROM room_members WHERE room_id = $1 AND user_id = $2"
params = ["{{captures.room}}", "{{caller.subject}}"]
notify_channel = "room_members"

[[facts]]
name = "flags"
kind = "http"
url = "http://127.0.0.1:9/flags/{{caller.subject}}"

[[rules]]
name = "rooms"
actions = ["rtc"]
channel = "room-{{room}}"
condition = 'size(facts.membership) > 0 && facts.flags == null'
project = "main"
account_claim = "sub"
"#,
                password = self.display("db-password"),
            )
    }

    /// The config with `from` replaced by `to` (once; `from` must be there).
    fn edit(&self, from: &str, to: &str) -> String {
        let config = self.config();
        assert!(config.contains(from), "the case edits {from:?}");
        config.replacen(from, to, 1)
    }

    /// The config with `lines` added to the postgres fact.
    fn postgres(&self, lines: &str) -> String {
        self.edit(
            "kind = \"postgres\"\n",
            &format!("kind = \"postgres\"\n{lines}\n"),
        )
    }

    /// The config with `lines` added to the http fact.
    fn http(&self, lines: &str) -> String {
        self.edit("kind = \"http\"\n", &format!("kind = \"http\"\n{lines}\n"))
    }

    /// The config with `lines` added to `[databases.main]`.
    fn database(&self, lines: &str) -> String {
        self.edit(
            "url = \"postgres://tokengate@127.0.0.1:5432/app\"\n",
            &format!("url = \"postgres://tokengate@127.0.0.1:5432/app\"\n{lines}\n"),
        )
    }
}

/// `(name, config text, extra env, the key the error names, a part of why)`.
type BadCase = (
    &'static str,
    String,
    Vec<(&'static str, &'static str)>,
    &'static str,
    &'static str,
);

fn bad_cases(f: &Files) -> Vec<BadCase> {
    let none = Vec::new;
    let secret = || vec![("FLAGS_TOKEN", HTTP_SECRET)];
    vec![
        // Kinds and the keys each takes.
        (
            "an unknown kind",
            f.edit("kind = \"postgres\"", "kind = \"ldap\""),
            none(),
            "facts[0].kind",
            "\"ldap\" is not \"postgres\" or \"http\"",
        ),
        (
            "a postgres key on an http fact",
            f.http("query = \"SELECT 1\""),
            none(),
            "facts[1].query",
            "is a key of postgres facts; this fact is kind = \"http\"",
        ),
        (
            "an http key on a postgres fact",
            f.postgres("url = \"http://127.0.0.1:9/x\""),
            none(),
            "facts[0].url",
            "is a key of http facts; this fact is kind = \"postgres\"",
        ),
        (
            "an unknown fact key",
            f.http("cache = true"),
            none(),
            "facts[1].cache",
            "unknown field",
        ),
        // Postgres facts.
        (
            "no database",
            f.edit("database = \"main\"\n", ""),
            none(),
            "facts[0].database",
            "names its [databases.<name>]",
        ),
        (
            "no query",
            f.edit(
                "query = \"SELECT role FROM room_members WHERE room_id = $1 AND user_id = $2\"\n",
                "",
            ),
            none(),
            "facts[0].query",
            "needs its SQL",
        ),
        (
            "a blank query",
            f.edit(
                "query = \"SELECT role FROM room_members WHERE room_id = $1 AND user_id = $2\"",
                "query = \"  \"",
            ),
            none(),
            "facts[0].query",
            "needs its SQL",
        ),
        (
            "a database that is not configured",
            f.edit("database = \"main\"", "database = \"other\""),
            none(),
            "facts[0].database",
            "\"other\" is not a [databases.<name>]",
        ),
        (
            "fewer params than the query's parameters",
            f.edit(
                "params = [\"{captures.room}\", \"{caller.subject}\"]",
                "params = [\"{captures.room}\"]",
            ),
            none(),
            "facts[0].params",
            "parameters up to $2 and params has 1 templates",
        ),
        (
            "more params than the query's parameters",
            f.edit(
                "params = [\"{captures.room}\", \"{caller.subject}\"]",
                "params = [\"{captures.room}\", \"{caller.subject}\", \"{channel}\"]",
            ),
            none(),
            "facts[0].params",
            "parameters up to $2 and params has 3 templates",
        ),
        (
            "an unknown placeholder in params",
            f.edit("\"{caller.subject}\"]", "\"{nope}\"]"),
            none(),
            "facts[0].params[1]",
            "{nope} is not a placeholder",
        ),
        (
            "an unclosed placeholder in params",
            f.edit("[\"{captures.room}\",", "[\"{captures.room\","),
            none(),
            "facts[0].params[0]",
            "has a `{` that is never closed",
        ),
        (
            "a stray closing brace in params",
            f.edit("[\"{captures.room}\",", "[\"captures.room}\","),
            none(),
            "facts[0].params[0]",
            "has a `}` that closes nothing",
        ),
        (
            "no rows",
            f.postgres("max_rows = 0"),
            none(),
            "facts[0].max_rows",
            "must be 1 to 10000",
        ),
        (
            "a notify channel that is not a name",
            f.edit(
                "notify_channel = \"room_members\"",
                "notify_channel = \"Bad-Name\"",
            ),
            none(),
            "facts[0].notify_channel",
            "a channel is lowercase letters",
        ),
        // HTTP facts.
        (
            "no url",
            f.edit("url = \"http://127.0.0.1:9/flags/{caller.subject}\"\n", ""),
            none(),
            "facts[1].url",
            "an http fact needs its URL",
        ),
        (
            "a placeholder in the URL's host",
            f.edit(
                "url = \"http://127.0.0.1:9/flags/{caller.subject}\"",
                "url = \"http://{caller.subject}.flags.internal/x\"",
            ),
            none(),
            "facts[1].url",
            "has a placeholder in its host",
        ),
        (
            "a placeholder in the URL's port",
            f.edit(
                "url = \"http://127.0.0.1:9/flags/{caller.subject}\"",
                "url = \"http://127.0.0.1:{request.uid}/x\"",
            ),
            none(),
            "facts[1].url",
            "has a placeholder in its host",
        ),
        (
            "a URL that is not http",
            f.edit(
                "url = \"http://127.0.0.1:9/flags/{caller.subject}\"",
                "url = \"ftp://127.0.0.1:9/flags/{caller.subject}\"",
            ),
            none(),
            "facts[1].url",
            "is not an http:// or https:// URL",
        ),
        (
            "an unclosed placeholder in the URL",
            f.edit("/flags/{caller.subject}\"", "/flags/{caller.subject\""),
            none(),
            "facts[1].url",
            "has a `{` that is never closed",
        ),
        (
            "an unknown placeholder in the URL",
            f.edit("/flags/{caller.subject}\"", "/flags/{nope}\""),
            none(),
            "facts[1].url",
            "{nope} is not a placeholder",
        ),
        (
            "a password in the URL",
            f.edit(
                "url = \"http://127.0.0.1:9/flags/{caller.subject}\"",
                &format!("url = \"http://svc:{HTTP_URL_PASSWORD}@127.0.0.1:9/flags/{{caller.subject}}\""),
            ),
            none(),
            "facts[1].url",
            "put the credential in secret_file or secret_env",
        ),
        (
            "an unknown method",
            f.http("method = \"PUT\""),
            none(),
            "facts[1].method",
            "\"PUT\" is not \"GET\" or \"POST\"",
        ),
        (
            "a body with GET",
            f.http("body = { user = \"{caller.subject}\" }"),
            none(),
            "facts[1].body",
            "is only for method = \"POST\"",
        ),
        (
            "an unknown placeholder in the body",
            f.http("method = \"POST\"\nbody = { user = \"{nope}\" }"),
            none(),
            "facts[1].body.user",
            "{nope} is not a placeholder",
        ),
        (
            "a header name with a space",
            f.http("headers = { \"x bad\" = \"1\" }"),
            none(),
            "facts[1].headers.x bad",
            "is not a valid header name and value",
        ),
        (
            "a header value with a newline",
            f.http("headers = { x-team = \"a\\nb\" }"),
            none(),
            "facts[1].headers.x-team",
            "is not a valid header name and value",
        ),
        (
            "a Host header",
            f.http("headers = { Host = \"evil.example\" }"),
            none(),
            "facts[1].headers.host",
            "is set by the HTTP client itself",
        ),
        (
            "a header the secret sets",
            f.http("secret_env = \"FLAGS_TOKEN\"\nheaders = { Authorization = \"Bearer x\" }"),
            secret(),
            "facts[1].headers.authorization",
            "is the secret's header",
        ),
        (
            "a secret from a file and a variable",
            f.http(&format!(
                "secret_file = \"{}\"\nsecret_env = \"FLAGS_TOKEN\"",
                f.display("db-password")
            )),
            secret(),
            "facts[1].secret_file",
            "set secret_file or secret_env, not both",
        ),
        (
            "a secret header without a secret",
            f.http("secret_header = \"x-token\""),
            none(),
            "facts[1].secret_header",
            "needs secret_file or secret_env",
        ),
        (
            "a secret variable that is not set",
            f.http("secret_env = \"FLAGS_TOKEN\""),
            none(),
            "facts[1].secret_env",
            "FLAGS_TOKEN",
        ),
        (
            "a secret file that is not there",
            f.http("secret_file = \"/nonexistent/flags-token\""),
            none(),
            "facts[1].secret_file",
            "/nonexistent/flags-token",
        ),
        (
            "an http CA file without a certificate",
            f.http(&format!("ca_file = \"{}\"", f.display("not-a-ca.pem"))),
            none(),
            "facts[1].ca_file",
            "holds no PEM certificate",
        ),
        (
            "no response bytes",
            f.http("max_response_bytes = 0"),
            none(),
            "facts[1].max_response_bytes",
            "must be 1 to",
        ),
        // Bounds every fact has.
        (
            "a zero timeout",
            f.http("timeout = \"0s\""),
            none(),
            "facts[1].timeout",
            "must be positive",
        ),
        (
            "a timeout over 5s",
            f.http("timeout = \"6s\""),
            none(),
            "facts[1].timeout",
            "must be at most 5s",
        ),
        (
            "a ttl that is not a duration",
            f.http("ttl = \"a while\""),
            none(),
            "facts[1].ttl",
            "",
        ),
        (
            "no cache entries",
            f.postgres("max_entries = 0"),
            none(),
            "facts[0].max_entries",
            "must be 1 to",
        ),
        // Names.
        (
            "a fact name with a capital",
            f.edit("name = \"membership\"", "name = \"Membership\""),
            none(),
            "facts[0].name",
            "a fact name is lowercase letters",
        ),
        (
            "a fact name starting with a digit",
            f.edit("name = \"flags\"", "name = \"2x\""),
            none(),
            "facts[1].name",
            "starting with a letter",
        ),
        (
            "two facts with one name",
            f.edit("name = \"flags\"", "name = \"membership\""),
            none(),
            "facts[1].name",
            "facts[0] already has this name",
        ),
        (
            "a database name with a dash",
            f.edit("[databases.main]", "[databases.main-db]")
                .replace("database = \"main\"", "database = \"main-db\""),
            none(),
            "databases.main-db",
            "a database name is lowercase letters",
        ),
        // Databases.
        (
            "a password in the database URL",
            f.edit(
                "url = \"postgres://tokengate@127.0.0.1:5432/app\"",
                &format!("url = \"postgres://tokengate:{URL_PASSWORD}@127.0.0.1:5432/app\""),
            ),
            none(),
            "databases.main.url",
            "url holds a password; put it in password_file or password_env",
        ),
        (
            "a password in the database URL's query",
            f.edit(
                "url = \"postgres://tokengate@127.0.0.1:5432/app\"",
                &format!("url = \"postgres://tokengate@127.0.0.1:5432/app?password={URL_PASSWORD}\""),
            ),
            none(),
            "databases.main.url",
            "url holds a password",
        ),
        (
            "a database URL that is not one",
            f.edit(
                "url = \"postgres://tokengate@127.0.0.1:5432/app\"",
                "url = \"postgres://tokengate@127.0.0.1:port/app\"",
            ),
            none(),
            "databases.main.url",
            "url is not a PostgreSQL URL",
        ),
        (
            "sslmode=require without a CA file",
            f.edit(
                "postgres://tokengate@127.0.0.1:5432/app\"",
                "postgres://tokengate@127.0.0.1:5432/app?sslmode=require\"",
            ),
            none(),
            "databases.main.url",
            "sslmode=require; give ca_file",
        ),
        (
            "a password file that is not there",
            f.edit(&f.display("db-password"), "/nonexistent/db-password"),
            none(),
            "databases.main.password_file",
            "/nonexistent/db-password",
        ),
        (
            "a password from a file and a variable",
            f.database("password_env = \"DB_PASSWORD\""),
            vec![("DB_PASSWORD", DB_PASSWORD)],
            "databases.main.password_file",
            "set password_file or password_env, not both",
        ),
        (
            "a CA file without a certificate",
            f.database(&format!("ca_file = \"{}\"", f.display("not-a-ca.pem"))),
            none(),
            "databases.main.ca_file",
            "holds no PEM certificate",
        ),
        (
            "a CA file that is not there",
            f.database("ca_file = \"/nonexistent/ca.pem\""),
            none(),
            "databases.main.ca_file",
            "/nonexistent/ca.pem",
        ),
        (
            "no pooled connections",
            f.database("pool_size = 0"),
            none(),
            "databases.main.pool_size",
            "must be 1 to 1024",
        ),
        (
            "a zero statement timeout",
            f.database("statement_timeout = \"0s\""),
            none(),
            "databases.main.statement_timeout",
            "must be positive",
        ),
        (
            "an unknown database key",
            f.database("password = \"x\""),
            none(),
            "databases.main.password",
            "unknown field",
        ),
        // Rules that read facts.
        (
            "a rule reading an undeclared fact",
            f.edit("facts.flags == null", "facts.flag == null"),
            none(),
            "rules[1].condition",
            "reads facts.flag, which no [[facts]] declares (declared: membership, flags)",
        ),
        (
            "a rule without the capture a fact's params read",
            f.edit("channel = \"room-{room}\"", "channel = \"room-*\""),
            none(),
            "rules[1].condition",
            "reads facts.membership, whose input \"{captures.room}\" reads {captures.room}, and neither the rule's channel nor its peer_spiffe_id captures {room}",
        ),
        (
            "an mtls rule reading a fact by the caller's subject",
            f.edit(
                "condition = 'size(facts.membership) > 0 && facts.flags == null'\nproject = \"main\"\naccount_claim = \"sub\"",
                "condition = 'size(facts.membership) > 0'\nproject = \"main\"\nauthenticate = \"mtls\"\ncaller_chooses_identity = true",
            ),
            none(),
            "rules[1].condition",
            "reads facts.membership, whose input \"{caller.subject}\" reads {caller.subject} from the JWT, and the rule says authenticate = \"mtls\"",
        ),
    ]
}

/// Writes `config` and runs check-config on it with the base env and `env`.
fn check(
    dir: &Path,
    name: &str,
    config: &str,
    env: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let mut all_env = vec![EXAMPLE_ENV[0]];
    all_env.extend_from_slice(env);
    let output = run(&["check-config", path.to_str().unwrap()], &all_env);
    let (stdout, stderr) = text(&output);
    (output.status.code(), stdout, stderr)
}

/// No password or secret of these tests in `all`.
fn assert_no_secret(all: &str, case: &str) {
    for secret in [DB_PASSWORD, URL_PASSWORD, HTTP_SECRET, HTTP_URL_PASSWORD] {
        assert!(
            !all.contains(secret),
            "{case}: {secret:?} is printed: {all}"
        );
    }
    assert_no_certificate(all);
}

#[test]
fn bad_facts_and_databases_exit_64_and_name_the_key() {
    let files = Files::new();
    let dir = tempfile::tempdir().unwrap();
    // The config every case edits is itself valid: each failure is the edit's.
    let (code, stdout, stderr) = check(dir.path(), "good", &files.config(), &[]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");

    for (i, (name, config, env, key, why)) in bad_cases(&files).into_iter().enumerate() {
        let (code, stdout, stderr) = check(dir.path(), &format!("bad-{i}"), &config, &env);
        assert_eq!(code, Some(64), "{name}: {stdout}\n{stderr}");
        let named = format!("{key}: ");
        let line = stderr
            .lines()
            .find(|line| line.contains(&named))
            .unwrap_or_else(|| panic!("{name}: the error names {key}: {stderr}"));
        assert!(line.contains(why), "{name}: {why:?} in {line}");
        assert!(!stdout.contains("config ok"), "{name}: {stdout}");
        assert_no_secret(&format!("{stdout}{stderr}"), name);
    }
}

#[test]
fn check_config_prints_the_databases_and_facts_and_never_their_secrets() {
    let files = Files::new();
    let dir = tempfile::tempdir().unwrap();
    let config = files.config()
        + &format!(
            r#"
[databases.replica]
url = "postgres://reader@127.0.0.1:5433/app?sslmode=require"
password_env = "REPLICA_PASSWORD"
ca_file = "{ca}"
pool_size = 3
statement_timeout = "400ms"

[[facts]]
name = "ticket"
kind = "postgres"
database = "replica"
query = "SELECT 1 FROM tickets WHERE channel = $1"
params = ["{{channel}}"]
ttl = "2m"
negative_ttl = "10s"
error_ttl = "3s"
timeout = "1500ms"
max_entries = 500

[[facts]]
name = "account"
kind = "http"
url = "https://accounts.internal/v1/users/{{caller.subject}}?project={{request.project}}"
method = "POST"
body = {{ org = "{{claims.org}}" }}
headers = {{ x-caller = "tokengate" }}
secret_env = "FLAGS_TOKEN"
ca_file = "{ca}"
"#,
            ca = files.display("ca.pem"),
        );
    let (code, stdout, stderr) = check(
        dir.path(),
        "facts",
        &config,
        &[
            ("REPLICA_PASSWORD", DB_PASSWORD),
            ("FLAGS_TOKEN", HTTP_SECRET),
        ],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    for expected in [
        "config ok",
        "database \"main\": postgres://tokengate@127.0.0.1:5432/app (pool 8, statement timeout 1s)\n",
        "database \"replica\": postgres://reader@127.0.0.1:5433/app?sslmode=require (pool 3, statement timeout 400ms, TLS)\n",
        "fact \"membership\": postgres databases.main, dropped on NOTIFY room_members; timeout 250ms, ttl 30s, negative ttl 5s, error ttl 1s, at most 10000 entries\n",
        "fact \"flags\": http http://127.0.0.1:9/flags/{caller.subject}; timeout 250ms, ttl 30s, negative ttl 5s, error ttl 1s, at most 10000 entries\n",
        "fact \"ticket\": postgres databases.replica; timeout 1.5s, ttl 120s, negative ttl 10s, error ttl 3s, at most 500 entries\n",
        "fact \"account\": http https://accounts.internal/v1/users/{caller.subject}?project={request.project}; timeout 250ms",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in {stdout}");
    }
    // Databases are listed before facts, facts in config order.
    let at = |needle: &str| stdout.find(needle).unwrap();
    assert!(at("database \"main\"") < at("database \"replica\""));
    assert!(at("database \"replica\"") < at("fact \"membership\""));
    assert!(at("fact \"membership\"") < at("fact \"flags\""));
    assert!(at("fact \"flags\"") < at("fact \"ticket\""));
    assert!(at("fact \"ticket\"") < at("fact \"account\""));
    assert_no_secret(&format!("{stdout}{stderr}"), "the good config");

    // Without facts, no database or fact line at all.
    let (code, stdout, stderr) = check(dir.path(), "none", &base_config(), &[]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(!stdout.contains("database \""), "{stdout}");
    assert!(!stdout.contains("fact \""), "{stdout}");
}
