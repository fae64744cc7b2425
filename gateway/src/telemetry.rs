//! OpenTelemetry traces over OTLP/HTTP: one server span per request, a child of the client's
//! W3C `traceparent` when it sent one, and the parent of the backend's work (the `traceparent`
//! the backend receives names this span). Spans are exported in batches from the exporter's own
//! thread, so a slow or unreachable collector never slows or fails a request.

use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};
use pingora::http::RequestHeader;

pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Telemetry {
    /// `None` when tracing is not configured.
    pub fn start(cfg: &conf::Telemetry) -> anyhow::Result<Option<Self>> {
        let Some(url) = &cfg.otlp_traces_url else {
            return Ok(None);
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url.as_str())
            .with_timeout(Duration::from_secs(5))
            .build()?;
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(cfg.export_interval)
            .with_max_queue_size(8_192)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch)
                    .build(),
            )
            .with_resource(
                Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("sessiongate");
        tracing::info!(url = %url, "exporting traces over OTLP");
        Ok(Some(Self { provider, tracer }))
    }

    /// Starts the request's span, under the client's trace context if it sent one.
    pub fn request_span(&self, req: &RequestHeader, listener: &'static str) -> Context {
        let parent = TraceContextPropagator::new()
            .extract(&opentelemetry_http::HeaderExtractor(&req.headers));
        let span = self
            .tracer
            .span_builder(format!("{} {}", req.method, req.uri.path()))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", req.method.to_string()),
                KeyValue::new("url.path", req.uri.path().to_owned()),
                KeyValue::new("sessiongate.listener", listener),
            ])
            .start_with_context(&self.tracer, &parent);
        parent.with_span(span)
    }

    /// Flushes what is queued (at shutdown).
    pub fn shutdown(&self) {
        let _ = self.provider.shutdown();
    }
}

/// The `traceparent` that makes the backend's work a child of this request's span.
pub fn traceparent(cx: &Context) -> Option<String> {
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Ends the request's span with what is known at the end of the request.
pub fn finish(cx: &Context, attributes: Vec<KeyValue>, status: u16, error: Option<&'static str>) {
    let span = cx.span();
    span.set_attributes(attributes);
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if let Some(reason) = error {
        span.set_attribute(KeyValue::new("sessiongate.error", reason));
        if status >= 500 || status == 424 {
            span.set_status(Status::error(reason));
        }
    }
    span.end();
}

/// Adds a point in time to the request's span (placement, upstream connect, …).
pub fn event(cx: &Context, name: &'static str, attributes: Vec<KeyValue>) {
    cx.span().add_event(name, attributes);
}
