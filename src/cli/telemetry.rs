//! The trace exporter of `tokengate serve`: OpenTelemetry's OTLP/gRPC
//! exporter (on the same tonic 0.14 the service serves with), a batch
//! processor, a parent-based ratio sampler and the service's resource, all
//! from the validated `[telemetry]` settings. The spans themselves are
//! `tracing` spans made by the pipeline and the key fetcher; the
//! `tracing-opentelemetry` layer that turns them into OpenTelemetry spans is
//! added to the subscriber by `logging::init`.
//!
//! Only `tokengate`'s own spans are exported: the exporter's own HTTP/2
//! stack is traced too (h2, hyper), and exporting its spans would feed the
//! exporter with the exporter.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Tracer};

use crate::config::TelemetrySettings;

/// How long one export may take before the batch is dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The installed exporter; [`Tracing::shutdown`] flushes what is queued.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Builds the exporter for `settings`. Must run inside the Tokio runtime
    /// that will carry the exports (tonic's channel lives on it), and that
    /// runtime must outlive [`Tracing::shutdown`].
    pub fn start(settings: &TelemetrySettings) -> anyhow::Result<Self> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint())
            .with_timeout(EXPORT_TIMEOUT);
        if settings.endpoint().starts_with("https://") {
            // The system's roots, as reqwest uses for the JWKS fetches.
            exporter = exporter
                .with_tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots());
        }
        let exporter = exporter.build()?;
        // An empty builder: the SDK's default detectors would read
        // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES behind the config's
        // back; the config already has, through its lookup function.
        let resource = Resource::builder_empty()
            .with_service_name(settings.service_name().to_owned())
            .with_attributes(
                settings
                    .resource()
                    .iter()
                    .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
            )
            .with_attribute(KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION").to_owned(),
            ))
            .build();
        // Parent-based: a caller's sampled flag is honoured either way, and
        // the ratio decides only for the traces tokengate starts.
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sampling_ratio(),
        )));
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        Ok(Self { provider })
    }

    /// The tracer the `tracing-opentelemetry` layer records into.
    pub fn tracer(&self) -> Tracer {
        self.provider.tracer("tokengate")
    }

    /// Exports every span still queued and stops the exporter; a failure is
    /// reported and otherwise ignored, since the service has already drained.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("tokengate: trace export at shutdown: {error}");
        }
    }
}
