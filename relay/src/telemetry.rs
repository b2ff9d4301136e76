//! Logging and trace export.
//!
//! Logs go to stderr as text or JSON. With `telemetry.otlpEndpoint` set, spans are also exported
//! over OTLP/HTTP. Each message's span joins the trace whose id is the message's queue id, so the
//! `traceparent` that travels with the queue entry continues that trace in delivery.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use postern_config::{LogConfig, LogFormat, TelemetryConfig};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The OTLP exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlpEndpoint: {0}")]
pub struct TelemetryError(String);

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes it.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(%err, "trace exporter did not flush");
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` if set, else the configured level; plus the OTLP
/// layer when an endpoint is configured.
pub fn init(log: &LogConfig, telemetry: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let provider = telemetry
        .otlp_endpoint
        .as_deref()
        .map(|endpoint| exporter(endpoint, &telemetry.service_name))
        .transpose()?;
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("postern")));
    let (json, text) = match log.format {
        LogFormat::Json => (
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            ),
            None,
        ),
        // Colours only on a terminal: a log file or a collector gets plain text.
        LogFormat::Text => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(text)
        .with(otel)
        .try_init();
    Ok(Telemetry { provider })
}

fn exporter(endpoint: &str, service_name: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .build()
        .map_err(|e| TelemetryError(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_string())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Makes `span` a child of the trace named by `trace_id` and returns the W3C `traceparent` of
/// the span. Without an OTLP exporter the span id is derived from the trace id.
pub fn join_trace(span: &tracing::Span, trace_id: u128) -> String {
    let parent_span = SpanId::from_bytes(((trace_id as u64) | 1).to_be_bytes());
    let remote = SpanContext::new(
        TraceId::from_bytes(trace_id.to_be_bytes()),
        parent_span,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    let context = span.context();
    let own = context.span().span_context().clone();
    let span_id = if own.is_valid() && own.trace_id() == TraceId::from_bytes(trace_id.to_be_bytes())
    {
        own.span_id()
    } else {
        parent_span
    };
    format!("00-{trace_id:032x}-{span_id}-01")
}
