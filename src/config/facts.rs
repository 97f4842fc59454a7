//! `[databases.<name>]` and `[[facts]]` as written, and their validation into
//! `facts::FactsConfig`: names, kinds and the keys each kind takes, input
//! templates, the query's parameter count, URLs, headers, bounds and
//! durations, and every password and secret read like every other secret.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::duration::HumanDuration;
use super::secret::SecretSource;
use super::{ConfigError, invalid};
use crate::facts::{
    DatabaseSettings, FactSettings, FactsConfig, HttpMethod, HttpSettings, PostgresSettings,
    Redacted, SourceSettings, UrlTemplate,
};
use crate::policy::InputTemplate;

/// The longest `timeout` of a fact: a call waits for it.
const MAX_TIMEOUT: Duration = Duration::from_secs(5);
/// The most facts accepted.
const MAX_FACTS: usize = 64;
/// The largest `max_response_bytes`.
const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// The most rows `max_rows` may allow.
const MAX_ROWS: usize = 10_000;
/// The most cache entries one fact may hold.
const MAX_ENTRIES: usize = 10_000_000;

/// One `[databases.<name>]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DatabaseSection {
    /// `postgres://user@host:port/db`, without a password.
    pub url: String,
    /// A file holding the password.
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
    /// A PEM file of the CAs that sign the server's certificate: TLS when set.
    pub ca_file: Option<PathBuf>,
    /// The most pooled connections.
    pub pool_size: Option<usize>,
    /// The longest a connection attempt takes.
    pub connect_timeout: Option<HumanDuration>,
    /// The server-side bound on one statement.
    pub statement_timeout: Option<HumanDuration>,
}

/// One `[[facts]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FactSection {
    /// The name conditions read it by (`facts.<name>`).
    pub name: String,
    /// `postgres` or `http`.
    pub kind: String,
    /// The longest one fetch may take.
    pub timeout: Option<HumanDuration>,
    /// How long a non-empty result is cached.
    pub ttl: Option<HumanDuration>,
    /// How long an empty result is cached.
    pub negative_ttl: Option<HumanDuration>,
    /// How long a failure is remembered.
    pub error_ttl: Option<HumanDuration>,
    /// The most cache entries.
    pub max_entries: Option<usize>,
    // postgres
    /// The `[databases.<name>]` queried.
    pub database: Option<String>,
    /// The SQL, with `$1`, `$2`, ...
    pub query: Option<String>,
    /// The parameters' templates.
    pub params: Option<Vec<String>>,
    /// The most rows.
    pub max_rows: Option<usize>,
    /// A channel whose notifications drop the cached entries.
    pub notify_channel: Option<String>,
    // http
    /// The URL template.
    pub url: Option<String>,
    /// `GET` or `POST`.
    pub method: Option<String>,
    /// Fixed headers.
    pub headers: Option<BTreeMap<String, String>>,
    /// A POST's JSON body: field to template.
    pub body: Option<BTreeMap<String, String>>,
    /// A file holding the secret.
    pub secret_file: Option<PathBuf>,
    /// An environment variable holding the secret.
    pub secret_env: Option<String>,
    /// The header the secret goes in.
    pub secret_header: Option<String>,
    /// What precedes the secret.
    pub secret_prefix: Option<String>,
    /// A PEM file of the CAs that sign the service's certificate.
    pub ca_file: Option<PathBuf>,
    /// The largest body read.
    pub max_response_bytes: Option<usize>,
}

/// The keys only `postgres` facts take, and only `http` ones.
const POSTGRES_KEYS: [&str; 5] = ["database", "query", "params", "max_rows", "notify_channel"];
const HTTP_KEYS: [&str; 9] = [
    "url",
    "method",
    "headers",
    "body",
    "secret_file",
    "secret_env",
    "secret_header",
    "secret_prefix",
    "max_response_bytes",
];

/// Validates `[databases]` and `[[facts]]`.
pub(super) fn resolve(
    databases: &BTreeMap<String, DatabaseSection>,
    facts: &[FactSection],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<FactsConfig, ConfigError> {
    let mut resolved_databases = BTreeMap::new();
    for (name, section) in databases {
        if !is_identifier(name) {
            return Err(invalid(
                &format!("databases.{name}"),
                "a database name is lowercase letters, digits and _",
            ));
        }
        resolved_databases.insert(name.clone(), resolve_database(name, section, env)?);
    }
    if facts.len() > MAX_FACTS {
        return Err(invalid("facts", &format!("at most {MAX_FACTS} facts")));
    }
    let mut resolved: Vec<FactSettings> = Vec::with_capacity(facts.len());
    for (index, section) in facts.iter().enumerate() {
        let key = format!("facts[{index}]");
        if !is_identifier(&section.name) {
            return Err(invalid(
                &format!("{key}.name"),
                "a fact name is lowercase letters, digits and _, starting with a letter (conditions read it as facts.<name>)",
            ));
        }
        if let Some(first) = resolved.iter().position(|f| *f.name == *section.name) {
            return Err(invalid(
                &format!("{key}.name"),
                &format!("facts[{first}] already has this name; names must be unique"),
            ));
        }
        resolved.push(resolve_fact(section, &key, &resolved_databases, env)?);
    }
    Ok(FactsConfig {
        databases: resolved_databases,
        facts: resolved,
    })
}

fn resolve_database(
    name: &str,
    section: &DatabaseSection,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<DatabaseSettings, ConfigError> {
    let key = format!("databases.{name}");
    let password = read_secret(
        section.password_file.clone(),
        section.password_env.clone(),
        &key,
        "password",
        env,
    )?;
    let ca_pem = section
        .ca_file
        .as_ref()
        .map(|path| read_pem(path, &format!("{key}.ca_file")))
        .transpose()?;
    let pool_size = section.pool_size.unwrap_or(8);
    if pool_size == 0 || pool_size > 1024 {
        return Err(invalid(&format!("{key}.pool_size"), "must be 1 to 1024"));
    }
    let connect_timeout = positive(
        section.connect_timeout,
        Duration::from_secs(2),
        &format!("{key}.connect_timeout"),
    )?;
    let statement_timeout = positive(
        section.statement_timeout,
        Duration::from_secs(1),
        &format!("{key}.statement_timeout"),
    )?;
    let settings = DatabaseSettings {
        url: section.url.clone(),
        password,
        ca_pem,
        pool_size,
        connect_timeout,
        statement_timeout,
    };
    crate::facts::check_database(&settings)
        .map_err(|reason| invalid(&format!("{key}.url"), &reason))?;
    Ok(settings)
}

fn resolve_fact(
    section: &FactSection,
    key: &str,
    databases: &BTreeMap<String, DatabaseSettings>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<FactSettings, ConfigError> {
    let source = match section.kind.as_str() {
        "postgres" => {
            refuse_keys(section, key, &HTTP_KEYS, "http")?;
            SourceSettings::Postgres(resolve_postgres(section, key, databases)?)
        }
        "http" => {
            refuse_keys(section, key, &POSTGRES_KEYS, "postgres")?;
            SourceSettings::Http(resolve_http(section, key, env)?)
        }
        other => {
            return Err(invalid(
                &format!("{key}.kind"),
                &format!("{other:?} is not \"postgres\" or \"http\""),
            ));
        }
    };
    let timeout = positive(
        section.timeout,
        Duration::from_millis(250),
        &format!("{key}.timeout"),
    )?;
    if timeout > MAX_TIMEOUT {
        return Err(invalid(
            &format!("{key}.timeout"),
            &format!(
                "must be at most {}",
                humantime::format_duration(MAX_TIMEOUT)
            ),
        ));
    }
    let ttl = section.ttl.map_or(Duration::from_secs(30), |d| d.0);
    let negative_ttl = section
        .negative_ttl
        .map_or(Duration::from_secs(5).min(ttl), |d| d.0);
    if negative_ttl > ttl {
        return Err(invalid(
            &format!("{key}.negative_ttl"),
            "must be at most ttl: an empty answer is not kept longer than a found one",
        ));
    }
    let error_ttl = section.error_ttl.map_or(Duration::from_secs(1), |d| d.0);
    let max_entries = section.max_entries.unwrap_or(10_000);
    if max_entries == 0 || max_entries > MAX_ENTRIES {
        return Err(invalid(
            &format!("{key}.max_entries"),
            &format!("must be 1 to {MAX_ENTRIES}"),
        ));
    }
    Ok(FactSettings {
        name: Arc::from(section.name.as_str()),
        source,
        timeout,
        ttl,
        negative_ttl,
        error_ttl,
        max_entries,
    })
}

fn resolve_postgres(
    section: &FactSection,
    key: &str,
    databases: &BTreeMap<String, DatabaseSettings>,
) -> Result<PostgresSettings, ConfigError> {
    let database = section.database.clone().ok_or_else(|| {
        invalid(
            &format!("{key}.database"),
            "a postgres fact names its [databases.<name>]",
        )
    })?;
    if !databases.contains_key(&database) {
        return Err(invalid(
            &format!("{key}.database"),
            &format!("{database:?} is not a [databases.<name>]"),
        ));
    }
    let query = section
        .query
        .clone()
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| invalid(&format!("{key}.query"), "a postgres fact needs its SQL"))?;
    let params = section
        .params
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, text)| {
            InputTemplate::parse(text).map_err(|e| invalid(&format!("{key}.params[{i}]"), &e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let highest = highest_parameter(&query);
    if highest != params.len() {
        return Err(invalid(
            &format!("{key}.params"),
            &format!(
                "the query uses parameters up to ${highest} and params has {} templates; give one per parameter, $1 first",
                params.len()
            ),
        ));
    }
    let max_rows = section.max_rows.unwrap_or(100);
    if max_rows == 0 || max_rows > MAX_ROWS {
        return Err(invalid(
            &format!("{key}.max_rows"),
            &format!("must be 1 to {MAX_ROWS}"),
        ));
    }
    if let Some(channel) = &section.notify_channel
        && !is_identifier(channel)
    {
        return Err(invalid(
            &format!("{key}.notify_channel"),
            "a channel is lowercase letters, digits and _, starting with a letter",
        ));
    }
    Ok(PostgresSettings {
        database,
        query,
        params,
        max_rows,
        notify_channel: section.notify_channel.clone(),
    })
}

fn resolve_http(
    section: &FactSection,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<HttpSettings, ConfigError> {
    let url = section
        .url
        .as_deref()
        .ok_or_else(|| invalid(&format!("{key}.url"), "an http fact needs its URL"))?;
    let url = UrlTemplate::parse(url).map_err(|e| invalid(&format!("{key}.url"), &e))?;
    let method = match section.method.as_deref().unwrap_or("GET") {
        "GET" => HttpMethod::Get,
        "POST" => HttpMethod::Post,
        other => {
            return Err(invalid(
                &format!("{key}.method"),
                &format!("{other:?} is not \"GET\" or \"POST\""),
            ));
        }
    };
    let headers: Vec<(String, String)> = section
        .headers
        .iter()
        .flatten()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
        .collect();
    for (name, value) in &headers {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid_name || value.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(invalid(
                &format!("{key}.headers.{name}"),
                "is not a valid header name and value",
            ));
        }
        if matches!(
            name.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection"
        ) {
            return Err(invalid(
                &format!("{key}.headers.{name}"),
                "is set by the HTTP client itself",
            ));
        }
    }
    let body = section
        .body
        .iter()
        .flatten()
        .map(|(field, text)| {
            InputTemplate::parse(text)
                .map(|t| (field.clone(), t))
                .map_err(|e| invalid(&format!("{key}.body.{field}"), &e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !body.is_empty() && method == HttpMethod::Get {
        return Err(invalid(
            &format!("{key}.body"),
            "is only for method = \"POST\"",
        ));
    }
    let secret = read_secret(
        section.secret_file.clone(),
        section.secret_env.clone(),
        key,
        "secret",
        env,
    )?;
    let secret_header = section
        .secret_header
        .clone()
        .unwrap_or_else(|| "authorization".to_owned())
        .to_ascii_lowercase();
    if secret.is_none() && (section.secret_header.is_some() || section.secret_prefix.is_some()) {
        return Err(invalid(
            &format!("{key}.secret_header"),
            "needs secret_file or secret_env",
        ));
    }
    if secret.is_some() && headers.iter().any(|(name, _)| *name == secret_header) {
        return Err(invalid(
            &format!("{key}.headers.{secret_header}"),
            "is the secret's header; the secret sets it",
        ));
    }
    let ca_pem = section
        .ca_file
        .as_ref()
        .map(|path| read_pem(path, &format!("{key}.ca_file")))
        .transpose()?;
    let max_response_bytes = section.max_response_bytes.unwrap_or(64 * 1024);
    if max_response_bytes == 0 || max_response_bytes > MAX_RESPONSE_BYTES {
        return Err(invalid(
            &format!("{key}.max_response_bytes"),
            &format!("must be 1 to {MAX_RESPONSE_BYTES}"),
        ));
    }
    let settings = HttpSettings {
        url,
        method,
        headers,
        body,
        secret,
        secret_header,
        secret_prefix: section
            .secret_prefix
            .clone()
            .unwrap_or_else(|| "Bearer ".to_owned()),
        ca_pem,
        max_response_bytes,
    };
    crate::facts::check_http(&settings).map_err(|reason| invalid(key, &reason))?;
    Ok(settings)
}

/// Refuses the keys of the other kind, naming the first one set.
fn refuse_keys(
    section: &FactSection,
    key: &str,
    keys: &[&str],
    kind: &str,
) -> Result<(), ConfigError> {
    let set = |name: &str| match name {
        "database" => section.database.is_some(),
        "query" => section.query.is_some(),
        "params" => section.params.is_some(),
        "max_rows" => section.max_rows.is_some(),
        "notify_channel" => section.notify_channel.is_some(),
        "url" => section.url.is_some(),
        "method" => section.method.is_some(),
        "headers" => section.headers.is_some(),
        "body" => section.body.is_some(),
        "secret_file" => section.secret_file.is_some(),
        "secret_env" => section.secret_env.is_some(),
        "secret_header" => section.secret_header.is_some(),
        "secret_prefix" => section.secret_prefix.is_some(),
        "max_response_bytes" => section.max_response_bytes.is_some(),
        _ => false,
    };
    match keys.iter().find(|name| set(name)) {
        Some(name) => Err(invalid(
            &format!("{key}.{name}"),
            &format!(
                "is a key of {kind} facts; this fact is kind = {:?}",
                section.kind
            ),
        )),
        None => Ok(()),
    }
}

/// A password or secret from its file or variable (at most one).
fn read_secret(
    file: Option<PathBuf>,
    var: Option<String>,
    key: &str,
    what: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Redacted>, ConfigError> {
    let source = SecretSource::at_most_one(file, var, || {
        invalid(
            &format!("{key}.{what}_file"),
            &format!("set {what}_file or {what}_env, not both"),
        )
    })?;
    source
        .map(|source| {
            let name = match source {
                SecretSource::File(_) => format!("{key}.{what}_file"),
                SecretSource::Env(_) => format!("{key}.{what}_env"),
            };
            let secret = source.read(&name, env)?;
            String::from_utf8(secret.expose().to_vec())
                .map(Redacted)
                .map_err(|_| invalid(&name, "is not UTF-8"))
        })
        .transpose()
}

fn read_pem(path: &std::path::Path, key: &str) -> Result<Vec<u8>, ConfigError> {
    let pem = super::files::read_bounded(path, super::files::MAX_DOCUMENT_BYTES)
        .map_err(|e| invalid(key, &e))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(invalid(key, "holds no PEM certificate"));
    }
    Ok(pem)
}

fn positive(
    value: Option<HumanDuration>,
    default: Duration,
    key: &str,
) -> Result<Duration, ConfigError> {
    let value = value.map_or(default, |d| d.0);
    if value.is_zero() {
        return Err(invalid(key, "must be positive"));
    }
    Ok(value)
}

/// A name: a lowercase letter, then lowercase letters, digits and `_`, at most 63 bytes.
fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 63
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The highest `$n` in `query`, outside quoted text.
fn highest_parameter(query: &str) -> usize {
    let bytes = query.as_bytes();
    let mut highest = 0;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'\'' || b == b'"' => quote = Some(b),
            None if b == b'$' => {
                let digits: String = bytes[i + 1..]
                    .iter()
                    .take_while(|d| d.is_ascii_digit())
                    .map(|d| char::from(*d))
                    .collect();
                if let Ok(n) = digits.parse::<usize>() {
                    highest = highest.max(n);
                }
                i += digits.len();
            }
            None => {}
        }
        i += 1;
    }
    highest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_counted_outside_quotes() {
        assert_eq!(highest_parameter("SELECT 1"), 0);
        assert_eq!(
            highest_parameter("SELECT role FROM m WHERE a = $1 AND b = $2"),
            2
        );
        assert_eq!(highest_parameter("SELECT '$9' WHERE a = $1"), 1);
        assert_eq!(highest_parameter("SELECT $12"), 12);
        assert!(is_identifier("room_members2"));
        assert!(!is_identifier("Room"));
        assert!(!is_identifier("2x"));
        assert!(!is_identifier("a-b"));
    }
}
