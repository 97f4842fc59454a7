//! W3C trace context for the pipeline's call spans: a caller's `traceparent`
//! and `tracestate` continue its trace, and the trace id a call ends up in
//! is what its log lines carry.
//!
//! Spans are `tracing` spans everywhere else in the crate; this module is the
//! one place that reaches the OpenTelemetry context behind them. The exporter
//! itself (OTLP, sampling, resource) is installed by the CLI at start-up
//! (`cli/telemetry.rs`); without it these functions find no OpenTelemetry
//! layer and do nothing, so tracing off costs nothing here.
//!
//! [`record`] is how the pipeline sets a span's outcome fields (decision,
//! reason, rule, issuer...): only while spans are exported. Those fields are
//! for the trace backend; the audit event already carries every one of them,
//! and without an exporter recording them would only make the log layer
//! re-serialize each span's JSON fields once per field, which the profile of
//! issue 13 measured at about a tenth of a call's instructions.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Whether an OpenTelemetry layer exports this process's spans.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Marks that spans are exported from now on (the CLI calls it when it
/// installs the OpenTelemetry layer), so [`record`] records.
pub fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether spans are exported.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Records `value` into `span`'s `field` when spans are exported, and does
/// nothing otherwise (see the module doc).
pub fn record<V: tracing::Value>(span: &tracing::Span, field: &str, value: V) {
    if exporting() {
        span.record(field, value);
    }
}

/// The two W3C trace context headers, as a carrier the propagator reads.
struct Headers<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Makes `span` a child of the caller's span when `traceparent` is a valid
/// W3C header (an invalid one is ignored, as the W3C spec asks, and the call
/// starts a trace of its own), and returns the trace id `span` belongs to,
/// in lowercase hex, when tracing is on.
///
/// `span` must not have been entered yet: the OpenTelemetry span is built
/// when it is first entered, and its parent cannot change after that.
pub fn continue_trace(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> Option<String> {
    if let Some(traceparent) = traceparent {
        let carrier = Headers {
            traceparent,
            tracestate,
        };
        let parent = TraceContextPropagator::new().extract(&carrier);
        if parent.span().span_context().is_valid() {
            // Without the OpenTelemetry layer (tracing off) there is nothing to
            // continue, and that is not an error.
            let _ = span.set_parent(parent);
        }
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_layer_nothing_is_continued_and_nothing_panics() {
        let span = tracing::info_span!("call");
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(continue_trace(&span, Some(traceparent), None), None);
        assert_eq!(continue_trace(&span, Some("garbage"), Some("a=b")), None);
        assert_eq!(continue_trace(&span, None, None), None);
    }

    #[test]
    fn the_carrier_answers_only_the_two_headers() {
        let carrier = Headers {
            traceparent: "tp",
            tracestate: None,
        };
        assert_eq!(carrier.get("traceparent"), Some("tp"));
        assert_eq!(carrier.get("tracestate"), None);
        assert_eq!(carrier.get("authorization"), None);
    }
}
