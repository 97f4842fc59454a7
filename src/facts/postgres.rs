//! PostgreSQL facts: a parameterised query over a pooled connection, its
//! rows as a list of maps (column name to value).
//!
//! The inputs are only ever bound parameters (`$1`, `$2`, ...), converted to
//! the type PostgreSQL inferred for each (text, an integer, a float or a
//! bool; an input that does not convert fails the fact, closed). Every
//! connection is opened read-only (`default_transaction_read_only`) with a
//! `statement_timeout`, so a rule cannot write and a slow query is ended
//! by the server as well as abandoned by the caller's timeout. The pool
//! connects lazily: a database that is down at start delays nothing, and
//! a recovered one is used again without a restart.
//!
//! A database whose facts name notify channels has one more connection,
//! outside the pool, that `LISTEN`s on them: a notification drops the
//! cached entries of the facts on its channel (the one whose inputs its
//! payload names, a JSON array of strings, or all of them). While that
//! connection is down, notifications can be missed, so its loss and its
//! return each clear those caches; in between, entries live at most their TTL.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt as _;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Row};

use crate::domain::ClaimValue;
use crate::policy::InputTemplate;

use super::cache::Invalidator;
use super::http::Redacted;
use super::{FactsError, SourceError, value};

/// The longest wait between two attempts to reconnect the listener.
const MAX_LISTEN_BACKOFF: Duration = Duration::from_secs(30);

/// A `[databases.<name>]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseSettings {
    /// A `postgres://` URL without a password.
    pub url: String,
    /// The password, read from its file or variable.
    pub password: Option<Redacted>,
    /// A PEM bundle of the CAs that sign the server's certificate: TLS
    /// (verified) when set.
    pub ca_pem: Option<Vec<u8>>,
    /// The most connections the pool opens.
    pub pool_size: usize,
    /// The longest a connection attempt may take.
    pub connect_timeout: Duration,
    /// The server-side bound on one statement.
    pub statement_timeout: Duration,
}

/// A PostgreSQL fact's source.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresSettings {
    /// The `[databases.<name>]` it queries.
    pub database: String,
    /// One SQL statement with `$1`, `$2`, ... parameters.
    pub query: String,
    /// The parameters' templates, `$1` first.
    pub params: Vec<InputTemplate>,
    /// The most rows a result may have; more is an oversized result.
    pub max_rows: usize,
    /// A channel whose notifications drop this fact's cached entries.
    pub notify_channel: Option<String>,
}

/// A database: its pool, and the listener of its notify channels.
pub(crate) struct Database {
    name: String,
    pool: Pool,
    /// The longest a connection attempt (or a recycle check) may take.
    connect_timeout: Duration,
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    subscribers: Mutex<Vec<(String, Invalidator)>>,
    /// 0: no listener; 1: down; 2: listening.
    state: Arc<AtomicU8>,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A fact's query on its database.
pub(crate) struct Query {
    database: Arc<Database>,
    query: String,
    max_rows: usize,
    /// The fact's timeout: the longest a call waits for a free connection.
    wait: Duration,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Ok(mut listener) = self.listener.lock()
            && let Some(task) = listener.take()
        {
            task.abort();
        }
    }
}

/// The client config of `settings`: its URL, password, read-only sessions
/// and statement timeout.
pub(crate) fn client_config(settings: &DatabaseSettings) -> Result<tokio_postgres::Config, String> {
    let mut config: tokio_postgres::Config = settings
        .url
        .parse()
        .map_err(|e| format!("url is not a PostgreSQL URL: {e}"))?;
    if config.get_password().is_some() {
        return Err("url holds a password; put it in password_file or password_env".to_owned());
    }
    if let Some(password) = &settings.password {
        config.password(password.0.as_bytes());
    }
    if settings.ca_pem.is_none()
        && config.get_ssl_mode() == tokio_postgres::config::SslMode::Require
    {
        return Err(
            "url says sslmode=require; give ca_file, the CAs that sign the server's certificate"
                .to_owned(),
        );
    }
    // With a CA bundle the connection is TLS or nothing: the driver's
    // default (`prefer`) would let an attacker on the path answer "no TLS"
    // and then stand in for the database.
    if settings.ca_pem.is_some() {
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
    }
    let statement_ms = settings.statement_timeout.as_millis().max(1);
    config
        .application_name("tokengate")
        .connect_timeout(settings.connect_timeout)
        .options(format!(
            "-c default_transaction_read_only=on -c statement_timeout={statement_ms}"
        ));
    Ok(config)
}

/// Whether `settings` make a client config and, with a CA bundle, a TLS connector.
pub(crate) fn check(settings: &DatabaseSettings) -> Result<(), String> {
    client_config(settings)?;
    if let Some(pem) = &settings.ca_pem {
        rustls_connector(pem)?;
    }
    Ok(())
}

impl Database {
    /// A pool for `settings`, connecting on first use.
    pub(crate) fn connect(
        name: &str,
        settings: &DatabaseSettings,
    ) -> Result<Arc<Self>, FactsError> {
        let error = |reason: String| FactsError::Database {
            database: name.to_owned(),
            reason,
        };
        let config = client_config(settings).map_err(error)?;
        let tls = match &settings.ca_pem {
            Some(pem) => Some(rustls_connector(pem).map_err(error)?),
            None => None,
        };
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Some(tls) => Manager::from_config(config.clone(), tls.clone(), manager_config),
            None => Manager::from_config(config.clone(), tokio_postgres::NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(settings.connect_timeout))
            .build()
            .map_err(|e| error(format!("cannot build the pool: {e}")))?;
        Ok(Arc::new(Self {
            name: name.to_owned(),
            pool,
            connect_timeout: settings.connect_timeout,
            config,
            tls,
            subscribers: Mutex::new(Vec::new()),
            state: Arc::new(AtomicU8::new(0)),
            listener: Mutex::new(None),
        }))
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether the listener is connected; `None` without one.
    pub(crate) fn listening(&self) -> Option<bool> {
        match self.state.load(Ordering::Relaxed) {
            0 => None,
            state => Some(state == 2),
        }
    }

    /// Drops `invalidator`'s entries on each notification on `channel`.
    pub(crate) fn subscribe(&self, channel: &str, invalidator: Invalidator) {
        if let Ok(mut subscribers) = self.subscribers.lock() {
            subscribers.push((channel.to_owned(), invalidator));
        }
    }

    /// Opens one pooled connection in the background, so the first call
    /// does not pay for connecting; a failure is only logged (the pool
    /// tries again on use).
    pub(crate) fn warm(&self) {
        let pool = self.pool.clone();
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(error) = pool.get().await {
                tracing::warn!(database = %name, error = %error, "facts: the database is not reachable yet; its facts fail closed until it is");
            }
        });
    }

    /// Starts the listener, if any fact subscribed.
    pub(crate) fn listen(self: &Arc<Self>) {
        let subscribers: Vec<(String, Invalidator)> = match self.subscribers.lock() {
            Ok(s) => s.clone(),
            Err(_) => return,
        };
        if subscribers.is_empty() {
            return;
        }
        self.state.store(1, Ordering::Relaxed);
        // A silently dropped connection (a NAT's idle timeout) would leave
        // the listener deaf while it looks up: TCP keepalives find it.
        let mut config = self.config.clone();
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3);
        let listener = Listener {
            database: self.name.clone(),
            config,
            tls: self.tls.clone(),
            subscribers,
            state: Arc::clone(&self.state),
        };
        let task = tokio::spawn(listener.run());
        if let Ok(mut slot) = self.listener.lock() {
            *slot = Some(task);
        }
    }
}

/// The `LISTEN` connection of one database. It holds no reference to the
/// database, so dropping the database (a reload) aborts it.
struct Listener {
    database: String,
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    subscribers: Vec<(String, Invalidator)>,
    state: Arc<AtomicU8>,
}

impl Listener {
    async fn run(self) {
        const FIRST_BACKOFF: Duration = Duration::from_millis(250);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let listened = std::sync::atomic::AtomicBool::new(false);
            let ended = self.session(&listened).await;
            // A session that got as far as listening starts the backoff over.
            if listened.load(Ordering::Relaxed) {
                backoff = FIRST_BACKOFF;
            }
            match ended {
                Ok(()) => {}
                Err(error) => tracing::warn!(
                    database = %self.database,
                    error = %error,
                    retry_in_ms = backoff.as_millis() as u64,
                    "facts: the notification listener is down; cached facts live at most their ttl"
                ),
            }
            self.state.store(1, Ordering::Relaxed);
            // Notifications may be lost from here until it is back.
            self.clear_all();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_LISTEN_BACKOFF);
        }
    }

    /// One connection's life: connect, LISTEN, dispatch until it ends.
    async fn session(&self, listened: &std::sync::atomic::AtomicBool) -> Result<(), String> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let client = match &self.tls {
            Some(tls) => {
                let (client, connection) = self
                    .config
                    .connect(tls.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(drive(connection, tx));
                client
            }
            None => {
                let (client, connection) = self
                    .config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(drive(connection, tx));
                client
            }
        };
        let mut channels: Vec<&str> = self.subscribers.iter().map(|(c, _)| c.as_str()).collect();
        channels.sort_unstable();
        channels.dedup();
        // Channel names are checked identifiers (config), so quoting them is enough.
        let listen: String = channels
            .iter()
            .map(|c| format!("LISTEN \"{c}\";"))
            .collect();
        client
            .batch_execute(&listen)
            .await
            .map_err(|e| e.to_string())?;
        // Anything cached before now may have missed a notification.
        self.clear_all();
        self.state.store(2, Ordering::Relaxed);
        listened.store(true, Ordering::Relaxed);
        tracing::info!(database = %self.database, channels = %channels.join(","), "facts: listening for notifications");
        while let Some(notification) = rx.recv().await {
            self.dispatch(notification.channel(), notification.payload());
        }
        drop(client);
        Err("the connection closed".to_owned())
    }

    fn dispatch(&self, channel: &str, payload: &str) {
        let key: Option<Vec<String>> = serde_json::from_str(payload).ok();
        for (subscribed, invalidator) in &self.subscribers {
            if subscribed == channel {
                match &key {
                    Some(inputs) => invalidator.remove(inputs),
                    None => invalidator.clear(),
                }
            }
        }
    }

    fn clear_all(&self) {
        for (_, invalidator) in &self.subscribers {
            invalidator.clear();
        }
    }
}

/// Runs a connection, forwarding its notifications until it ends.
async fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    tx: tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
        match message {
            Ok(AsyncMessage::Notification(n)) => {
                if tx.send(n).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// A rustls connector trusting the CAs of `pem`.
fn rustls_connector(pem: &[u8]) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    let mut reader = pem;
    let mut added = 0;
    for certificate in rustls_pemfile_certs(&mut reader)? {
        roots
            .add(certificate)
            .map_err(|e| format!("ca_file: a certificate is not usable: {e}"))?;
        added += 1;
    }
    if added == 0 {
        return Err("ca_file holds no certificate".to_owned());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The certificates of a PEM bundle.
fn rustls_pemfile_certs(
    reader: &mut &[u8],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("ca_file is not a PEM bundle: {e}"))
}

impl Query {
    pub(crate) fn new(
        database: Arc<Database>,
        settings: &PostgresSettings,
        wait: Duration,
    ) -> Self {
        Self {
            database,
            query: settings.query.clone(),
            max_rows: settings.max_rows,
            wait,
        }
    }

    pub(crate) fn database(&self) -> &Arc<Database> {
        &self.database
    }

    /// Runs the query with `inputs` as `$1`, `$2`, ...
    pub(crate) async fn run(&self, inputs: &[String]) -> Result<ClaimValue, SourceError> {
        // The connection is taken in a task of its own: when the call's
        // timeout gives up on it, a connection being opened (TCP, TLS,
        // SCRAM) is still finished and pooled rather than dropped half way,
        // so a connect slower than the fact's timeout cannot starve every call.
        // The task waits for a free connection at most the fact's timeout
        // (then the call has given up anyway), so tasks cannot pile up
        // behind a pool that never frees one.
        let pool = self.database.pool.clone();
        let timeouts = deadpool_postgres::Timeouts {
            wait: Some(self.wait),
            create: Some(self.database.connect_timeout),
            recycle: Some(self.database.connect_timeout),
        };
        let client = tokio::spawn(async move { pool.timeout_get(&timeouts).await })
            .await
            .map_err(|e| SourceError::Failed(format!("the connection task failed: {e}")))?
            .map_err(|e| {
                SourceError::Failed(format!("no connection to {}: {e}", self.database.name))
            })?;
        // A prepared statement outlives a schema change (`0A000: cached plan
        // must not change result type`): on any database error the
        // connection's statements are forgotten, so the next call prepares
        // afresh instead of failing on this connection until a restart.
        let forget = |e: &tokio_postgres::Error| {
            if e.as_db_error().is_some() {
                client.statement_cache.clear();
            }
        };
        let statement = client.prepare_cached(&self.query).await.map_err(|e| {
            forget(&e);
            SourceError::Failed(format!("the query does not prepare: {}", db_error(&e)))
        })?;
        let params = statement
            .params()
            .iter()
            .zip(inputs)
            .enumerate()
            .map(|(i, (ty, input))| param(i + 1, ty, input))
            .collect::<Result<Vec<_>, _>>()?;
        if params.len() != statement.params().len() {
            return Err(SourceError::Failed(format!(
                "the query takes {} parameters and the fact has {} inputs",
                statement.params().len(),
                params.len()
            )));
        }
        let rows = client
            .query_raw(
                &statement,
                params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)),
            )
            .await
            .map_err(|e| {
                forget(&e);
                SourceError::Failed(format!("the query failed: {}", db_error(&e)))
            })?;
        let mut rows = std::pin::pin!(rows);
        let mut out = Vec::new();
        while let Some(row) = rows.next().await {
            let row = row.map_err(|e| {
                forget(&e);
                SourceError::Failed(format!("the query failed: {}", db_error(&e)))
            })?;
            if out.len() == self.max_rows {
                return Err(SourceError::Oversized(format!(
                    "the query returned more than {} rows",
                    self.max_rows
                )));
            }
            out.push(row_value(&row)?);
        }
        Ok(ClaimValue::Array(out))
    }
}

/// A server error's own message (tokio-postgres's Display says only "db error").
fn db_error(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => error.to_string(),
    }
}

/// Input `n` as a value of the type PostgreSQL inferred for `$n`.
fn param(n: usize, ty: &Type, input: &str) -> Result<Box<dyn ToSql + Sync + Send>, SourceError> {
    let bad = |what: &str| SourceError::Failed(format!("input ${n} is not {what}"));
    Ok(match *ty {
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            Box::new(input.to_owned())
        }
        Type::INT2 => Box::new(input.parse::<i16>().map_err(|_| bad("an int2"))?),
        Type::INT4 => Box::new(input.parse::<i32>().map_err(|_| bad("an int4"))?),
        Type::INT8 => Box::new(input.parse::<i64>().map_err(|_| bad("an int8"))?),
        Type::FLOAT4 => Box::new(input.parse::<f32>().map_err(|_| bad("a float4"))?),
        Type::FLOAT8 => Box::new(input.parse::<f64>().map_err(|_| bad("a float8"))?),
        Type::BOOL => Box::new(input.parse::<bool>().map_err(|_| bad("a bool"))?),
        ref other => {
            return Err(SourceError::Failed(format!(
                "parameter ${n} is a {other}; bind it as text and cast it in the query: ${n}::text::{other}"
            )));
        }
    })
}

/// One row as a map of column name to value.
fn row_value(row: &Row) -> Result<ClaimValue, SourceError> {
    let mut fields = std::collections::BTreeMap::new();
    for (i, column) in row.columns().iter().enumerate() {
        let failed = |e: tokio_postgres::Error| {
            SourceError::Failed(format!("column {} does not read: {e}", column.name()))
        };
        let value = match *column.type_() {
            Type::BOOL => row
                .try_get::<_, Option<bool>>(i)
                .map_err(failed)?
                .map(ClaimValue::Bool),
            Type::INT2 => row
                .try_get::<_, Option<i16>>(i)
                .map_err(failed)?
                .map(|v| ClaimValue::Int(v.into())),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)
                .map_err(failed)?
                .map(|v| ClaimValue::Int(v.into())),
            Type::INT8 => row
                .try_get::<_, Option<i64>>(i)
                .map_err(failed)?
                .map(ClaimValue::Int),
            Type::FLOAT4 => row
                .try_get::<_, Option<f32>>(i)
                .map_err(failed)?
                .map(|v| ClaimValue::Float(v.into())),
            Type::FLOAT8 => row
                .try_get::<_, Option<f64>>(i)
                .map_err(failed)?
                .map(ClaimValue::Float),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => row
                .try_get::<_, Option<String>>(i)
                .map_err(failed)?
                .map(ClaimValue::String),
            Type::JSON | Type::JSONB => match row
                .try_get::<_, Option<serde_json::Value>>(i)
                .map_err(failed)?
            {
                Some(document) => Some(value::from_json(document).map_err(SourceError::Failed)?),
                None => None,
            },
            Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => row
                .try_get::<_, Option<Vec<Option<String>>>>(i)
                .map_err(failed)?
                .map(|items| {
                    ClaimValue::Array(
                        items
                            .into_iter()
                            .map(|s| s.map_or(ClaimValue::Null, ClaimValue::String))
                            .collect(),
                    )
                }),
            Type::INT8_ARRAY => row
                .try_get::<_, Option<Vec<Option<i64>>>>(i)
                .map_err(failed)?
                .map(|items| {
                    ClaimValue::Array(
                        items
                            .into_iter()
                            .map(|v| v.map_or(ClaimValue::Null, ClaimValue::Int))
                            .collect(),
                    )
                }),
            Type::INT4_ARRAY => row
                .try_get::<_, Option<Vec<Option<i32>>>>(i)
                .map_err(failed)?
                .map(|items| {
                    ClaimValue::Array(
                        items
                            .into_iter()
                            .map(|v| v.map_or(ClaimValue::Null, |v| ClaimValue::Int(v.into())))
                            .collect(),
                    )
                }),
            ref other => {
                return Err(SourceError::Failed(format!(
                    "column {} is a {other}, which facts do not read; cast it in the query ({}::text, or extract(epoch from {})::bigint for a timestamp)",
                    column.name(),
                    column.name(),
                    column.name()
                )));
            }
        };
        fields.insert(column.name().to_owned(), value.unwrap_or(ClaimValue::Null));
    }
    Ok(ClaimValue::Object(fields))
}
