//! Log output: JSON lines for production, readable text for a terminal, and
//! the audit events as JSON lines in both cases.
//!
//! Logs never carry secrets, JWTs or tokens, only their fingerprints; that
//! rule is kept by the code that logs, and this module only picks the format.
//! Audit events (target `audit`) get their own writer: every field of the
//! schema is declared by the pipeline in every event, and a field that does
//! not apply is written as `null`, so each audit line has the same keys
//! whatever the log format, and an operator can route them by
//! `"target":"audit"` (or drop them with `TOKENGATE_LOG=info,audit=off`).
//!
//! A line logged during a call names the call: the pipeline's `call` span
//! carries `request_id` (and `trace_id` when tracing is on), and both formats
//! print the spans a line was logged in (JSON: `"spans": [{"name": "call",
//! "request_id": ...}, ...]`, outermost first; text: `call{request_id=...}:`).
//! When tracing is on, the same spans go to the OpenTelemetry layer too.
//!
//! Lines are written off the request path: every layer writes into one
//! `tracing-appender` non-blocking queue (one per process, so log and audit
//! lines keep their order), and its thread writes them to stderr through a
//! buffer flushed whenever the queue runs empty, so under load many lines
//! share a `write`. The queue is bounded by `logging.queue_lines`; a full one
//! blocks the logging call by default (no audit event is ever lost), or drops
//! the line and counts it (`logging.overflow = "drop"`,
//! `tokengate_log_lines_dropped_total`). The [`LogGuard`] that `init` returns
//! flushes the queue when the process is done with it.

use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt as _;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

use crate::config::LogSettings;
use crate::pipeline::AUDIT_TARGET;

/// The log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines.
    Text,
}

/// Writes audit events as one JSON object per line, undeclared-or-unrecorded fields as `null`.
#[derive(Debug)]
pub struct AuditLayer<W> {
    writer: W,
}

/// Keeps the log writer's thread; dropping it writes out what is still
/// queued (waiting at most a second), so hold it until the process is done.
#[must_use = "dropping the guard stops the log writer"]
#[derive(Debug)]
pub struct LogGuard {
    _worker: WorkerGuard,
}

/// Installs the global subscriber without trace export, with the default queue.
pub fn init(format: LogFormat) -> LogGuard {
    init_traced(format, None, &LogSettings::default())
}

/// Installs the global subscriber. The level comes from `TOKENGATE_LOG`
/// (`info` by default), in `tracing`'s `EnvFilter` syntax. Logs go to stderr so
/// that stdout stays for command output. With a `tracer`, tokengate's own
/// spans are also recorded into it (the exporter's own HTTP/2 spans and the
/// audit events never are). Lines go through a queue of `settings.queue_lines()`.
pub fn init_traced(
    format: LogFormat,
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
    settings: &LogSettings,
) -> LogGuard {
    let (writer, worker) = NonBlockingBuilder::default()
        .buffered_lines_limit(settings.queue_lines())
        .lossy(settings.drop_when_full())
        .thread_name("tokengate-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let dropped = writer.error_counter();
    let filter =
        EnvFilter::try_from_env("TOKENGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let not_audit = filter_fn(|metadata| metadata.target() != AUDIT_TARGET);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer.clone())
        // Colour only on a terminal: escape codes corrupt logs piped to a file or collector.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    // Text logs escape control characters in every field and message, so a
    // JWT claim such as `sub = "x\n<forged line>"` or an ANSI escape cannot
    // forge or hide a line on a terminal or in a file (JSON escapes them anyway).
    let escaped = tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        let raw = format!("{value:?}");
        let text = escape_controls(&raw);
        if field.name() == "message" {
            write!(writer, "{text}")
        } else {
            write!(writer, "{field}={text}")
        }
    })
    .delimited(" ");
    if tracer.is_some() {
        // The pipeline records its spans' outcome fields only for an exporter.
        crate::telemetry::set_exporting();
    }
    let traces = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_filter(filter_fn(|metadata| {
                metadata.target().starts_with("tokengate") && metadata.target() != AUDIT_TARGET
            }))
    });
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(AuditLayer::new(writer.clone()))
        .with(traces);
    // A second init (tests, or a subcommand calling another) keeps the first
    // subscriber, and with it the first writer and its counter.
    let installed = match format {
        LogFormat::Json => registry
            .with(json_layer::<_, NonBlocking>(writer).with_filter(not_audit))
            .try_init(),
        LogFormat::Text => registry
            .with(fmt.fmt_fields(escaped).with_filter(not_audit))
            .try_init(),
    };
    if installed.is_ok() {
        crate::metrics::watch_log_drops(move || dropped.dropped_lines() as u64);
    }
    LogGuard { _worker: worker }
}

/// The JSON lines layer: event fields flattened into the object, and the
/// spans the event happened in (the call's request id among their fields)
/// under `spans`, outermost first.
pub fn json_layer<S, W>(writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .with_target(false)
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(true)
}

/// `text` with every control character written as its Rust escape (`\n`, `\u{1b}`).
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

impl<W> AuditLayer<W> {
    /// A layer writing audit lines to `writer`.
    pub fn new(writer: W) -> Self {
        Self { writer }
    }
}

impl<S, W> Layer<S> for AuditLayer<W>
where
    S: Subscriber,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let metadata = event.metadata();
        if metadata.target() != AUDIT_TARGET {
            return;
        }
        // Written straight into one line, in the schema's declared order:
        // building a map of owned keys and values first cost more than the
        // rest of the audit path (issue 13's profile). serde_json still
        // writes (and escapes) every key and value.
        let fields = metadata.fields();
        let mut recorded = JsonValues {
            text: Vec::with_capacity(512),
            slots: vec![None; fields.len()],
        };
        event.record(&mut recorded);
        let mut line = Vec::with_capacity(recorded.text.len() + 32 * fields.len() + 48);
        line.extend_from_slice(b"{\"target\":");
        json(&mut line, AUDIT_TARGET);
        line.extend_from_slice(b",\"level\":");
        json(&mut line, metadata.level().as_str());
        for field in fields {
            line.push(b',');
            json(&mut line, field.name());
            line.push(b':');
            match recorded.slots.get(field.index()).copied().flatten() {
                Some((from, to)) => line.extend_from_slice(&recorded.text[from..to]),
                None => line.extend_from_slice(b"null"),
            }
        }
        line.extend_from_slice(b"}\n");
        // One write per line, so concurrent events never interleave mid-line.
        let _ = self.writer.make_writer().write_all(&line);
    }
}

/// An event's recorded values, each as JSON text in `text`, found by field index in `slots`.
struct JsonValues {
    text: Vec<u8>,
    slots: Vec<Option<(usize, usize)>>,
}

impl JsonValues {
    /// Writes `value` as JSON and remembers where it is.
    fn put<T: serde::Serialize + ?Sized>(&mut self, field: &Field, value: &T) {
        let from = self.text.len();
        json(&mut self.text, value);
        if let Some(slot) = self.slots.get_mut(field.index()) {
            *slot = Some((from, self.text.len()));
        }
    }
}

impl Visit for JsonValues {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, &value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, &value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, &value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, &format!("{value:?}"));
    }
}

/// Appends `value` as JSON. Writing into a `Vec` cannot fail, and these
/// values (numbers, booleans, strings) always serialize.
fn json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let _ = serde_json::to_writer(out, value);
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::Value;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("plain"), "plain");
        assert_eq!(
            escape_controls("a\nb\r\u{1b}[31m\u{8}"),
            "a\\nb\\r\\u{1b}[31m\\u{8}"
        );
    }

    #[test]
    fn audit_lines_have_every_declared_field_and_nulls_for_the_rest() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(AuditLayer::new(buffer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let absent: Option<&str> = None;
            tracing::info!(target: "audit", schema = 1u64, rpc = "X", rule = absent, caller = Some("a\nb"));
            tracing::info!(target: "other", ignored = true);
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let event: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(event["target"], "audit");
        assert_eq!(event["schema"], 1);
        assert_eq!(event["rpc"], "X");
        assert_eq!(event["rule"], Value::Null);
        assert!(event.as_object().unwrap().contains_key("rule"));
        // Control characters are escaped by JSON, so no forged second line.
        assert_eq!(event["caller"], "a\nb");
    }

    #[test]
    fn audit_values_of_every_kind_are_valid_json_in_declared_order() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(AuditLayer::new(buffer.clone()));
        let tricky = "q\"uote \\ back\u{1}\u{1f}\t\r\u{7f}é😀";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "audit",
                zed = u64::MAX,
                neg = -5i64,
                flag = false,
                text = tricky,
                shown = %tricky,
                debugged = ?tricky,
                absent = Option::<u64>::None,
            );
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        let event: serde_json::Map<String, Value> = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(event["zed"], u64::MAX);
        assert_eq!(event["neg"], -5);
        assert_eq!(event["flag"], false);
        assert_eq!(event["text"], tricky);
        assert_eq!(event["shown"], tricky);
        assert_eq!(event["debugged"], format!("{tricky:?}"));
        assert_eq!(event["absent"], Value::Null);
        // The schema's order, after target and level (serde_json's map sorts
        // its keys, so the raw text is checked).
        let keys = [
            "target", "level", "zed", "neg", "flag", "text", "shown", "debugged", "absent",
        ];
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| text.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
    }
}
