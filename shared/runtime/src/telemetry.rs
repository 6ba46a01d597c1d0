//! Logs, traces and metrics.
//!
//! - Logs: pretty for people, JSON for pipelines; inside an RPC or an applied
//!   feed event every line carries the `trace_id`.
//! - Traces: a span per RPC ([`RpcTelemetryLayer`]) and per applied feed
//!   event ([`feed_span`]). The W3C trace context crosses services in gRPC
//!   metadata ([`inject`]) and in feed events (`trace_parent`, from
//!   [`current_traceparent`]), so one trace follows an activity from the
//!   call that recorded it to the recognition it earned.
//! - Export: OTLP over gRPC, traces and metrics, only when
//!   `telemetry.otlp_endpoint` is set. Without it spans still get ids (so
//!   context propagates and logs correlate) but nothing leaves the process.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::future::BoxFuture;
use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{global, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::field::Empty;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogSettings, TelemetrySettings};

/// What must outlive the process's work: flushed by [`Telemetry::shutdown`].
#[derive(Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Exports what is still buffered. Call once, at exit.
    pub fn shutdown(self) {
        if let Some(t) = self.tracer {
            let _ = t.shutdown();
        }
        if let Some(m) = self.meter {
            let _ = m.shutdown();
        }
    }
}

/// Installs logging and tracing, without export: for tests and commands
/// that are not servers. Safe to call more than once (later calls keep the
/// first subscriber).
pub fn init(settings: &LogSettings) {
    let _ = install(settings, SdkTracerProvider::builder().build());
}

/// Installs logging, tracing and metrics for a server, exporting over OTLP
/// when an endpoint is configured.
pub fn start(log: &LogSettings, telemetry: &TelemetrySettings) -> anyhow::Result<Telemetry> {
    if telemetry.otlp_endpoint.is_empty() {
        init(log);
        return Ok(Telemetry::default());
    }
    let resource = Resource::builder()
        .with_service_name(telemetry.service_name.clone())
        .build();
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(telemetry.otlp_endpoint.clone())
        .build()
        .context("telemetry.otlp_endpoint: cannot build the OTLP span exporter")?;
    let tracer = SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .with_resource(resource.clone())
        .build();
    let metrics = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(telemetry.otlp_endpoint.clone())
        .build()
        .context("telemetry.otlp_endpoint: cannot build the OTLP metric exporter")?;
    let reader = PeriodicReader::builder(metrics)
        .with_interval(Duration::from_secs(telemetry.metrics_interval_secs))
        .build();
    let meter = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    global::set_meter_provider(meter.clone());
    install(log, tracer.clone());
    tracing::info!(endpoint = %telemetry.otlp_endpoint, "exporting traces and metrics over OTLP");
    Ok(Telemetry {
        tracer: Some(tracer),
        meter: Some(meter),
    })
}

/// Installs the global subscriber with spans going to `tracer`. Returns
/// false when a subscriber was already installed.
pub fn install(settings: &LogSettings, tracer: SdkTracerProvider) -> bool {
    global::set_text_map_propagator(TraceContextPropagator::new());
    // The log filter decides what is printed, not what is traced: spans at
    // INFO and above are exported whatever the log level.
    let filter = || EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = settings.format == "json";
    // A span per RPC is on every call's path: leave out what nobody reads
    // (the source location, the thread, busy and idle time) and the
    // OpenTelemetry context made current on every poll (nothing here reads
    // it: trace context comes from the tracing span).
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer.tracer("milestones"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(LevelFilter::INFO);
    global::set_tracer_provider(tracer);
    tracing_subscriber::registry()
        .with(json.then(|| {
            fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_filter(filter())
        }))
        .with((!json).then(|| fmt::layer().with_writer(std::io::stderr).with_filter(filter())))
        .with(otel)
        .try_init()
        .is_ok()
}

/// The W3C `traceparent` of the current span, or empty outside any trace:
/// stored in feed events so their consumers continue the trace.
pub fn current_traceparent() -> String {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&Span::current().context(), &mut carrier);
    carrier.remove("traceparent").unwrap_or_default()
}

/// The trace id of `span` in hex, as logs and exporters show it.
fn trace_id_of(span: &Span) -> String {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        sc.trace_id().to_string()
    } else {
        String::new()
    }
}

/// Makes `span` a child of the remote span named by `traceparent` (nothing
/// when it is empty or malformed), and records its trace id for the logs.
fn continue_trace(span: &Span, traceparent: &str) {
    if !traceparent.is_empty() {
        let carrier: HashMap<String, String> = [("traceparent".to_string(), traceparent.to_string())].into();
        let _ = span.set_parent(TraceContextPropagator::new().extract(&carrier));
    }
    span.record("trace_id", trace_id_of(span));
}

/// Adds the current trace context to an outgoing call's metadata.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    global::get_text_map_propagator(|p| p.inject_context(&Span::current().context(), &mut MetadataInjector(metadata)));
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span in which `consumer` applies one feed event, continuing the trace of
/// the write that produced it, and the feed's lag recorded: how long after
/// its commit (`event_time`) the event is applied.
pub fn feed_span(
    feed: &'static str,
    consumer: &'static str,
    sequence: i64,
    traceparent: &str,
    event_time: Option<&prost_types::Timestamp>,
) -> Span {
    let span = tracing::info_span!(
        "apply feed event",
        otel.name = %format!("apply {feed}"),
        feed,
        consumer,
        sequence,
        trace_id = Empty,
    );
    continue_trace(&span, traceparent);
    if let Some(t) = event_time {
        let committed = t.seconds * 1_000_000 + i64::from(t.nanos / 1_000);
        let lag_ms = (crate::wire::now_micros() - committed).max(0) as f64 / 1000.0;
        instruments().feed_lag.record(
            lag_ms,
            &[KeyValue::new("feed", feed), KeyValue::new("consumer", consumer)],
        );
    }
    span
}

/// Counts activities recorded (after their transaction committed).
pub fn record_ingested(count: usize, bulk: bool) {
    instruments().ingested.add(count as u64, &[KeyValue::new("bulk", bulk)]);
}

struct Instruments {
    rpc_duration: Histogram<f64>,
    feed_lag: Histogram<f64>,
    ingested: Counter<u64>,
}

/// The process's instruments, made on first use (after [`start`] installed
/// the meter provider; before it, or without export, they record nothing).
fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = global::meter("milestones");
        Instruments {
            rpc_duration: meter
                .f64_histogram("rpc.server.duration")
                .with_unit("ms")
                .with_description("Time to answer an RPC (for streams: to start answering).")
                .build(),
            feed_lag: meter
                .f64_histogram("milestones.feed.lag")
                .with_unit("ms")
                .with_description("Time from a feed event's commit to a consumer applying it.")
                .build(),
            ingested: meter
                .u64_counter("milestones.activities.recorded")
                .with_description("Activities recorded by the progress service.")
                .build(),
        }
    })
}

/// A tower layer for the gRPC server: one span per RPC, continuing the
/// caller's trace from its `traceparent` header, with the RPC's latency and
/// status code as metrics. Health checks and reflection are left out.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcTelemetryLayer;

impl<S> tower::Layer<S> for RpcTelemetryLayer {
    type Service = RpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcTelemetry { inner }
    }
}

/// The service [`RpcTelemetryLayer`] wraps around the routes.
#[derive(Clone, Debug)]
pub struct RpcTelemetry<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcTelemetry<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The clone that was not polled ready stays; the ready one serves.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path().trim_start_matches('/').to_string();
        if path.starts_with("grpc.") {
            return Box::pin(inner.call(req));
        }
        let (service, method) = path.split_once('/').unwrap_or((path.as_str(), ""));
        let (service, method) = (service.to_string(), method.to_string());
        let span = tracing::info_span!(
            "rpc",
            otel.name = %path,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = Empty,
            trace_id = Empty,
        );
        let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
        span.record("trace_id", trace_id_of(&span));
        let started = Instant::now();
        let future = span.in_scope(|| inner.call(req));
        Box::pin(
            async move {
                let result = future.await;
                // Errors are sent as trailers-only responses, so the status
                // is in the headers; a normal response's is in trailers (OK
                // unless a stream fails later).
                let code = match &result {
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(0),
                    Err(_) => 2,
                };
                Span::current().record("rpc.grpc.status_code", code);
                let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
                // UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS:
                // the server's problem, worth a line at the default level.
                if matches!(code, 2 | 4 | 13 | 14 | 15) {
                    tracing::warn!(code, elapsed_ms, "rpc failed");
                } else {
                    tracing::debug!(code, elapsed_ms, "rpc done");
                }
                instruments().rpc_duration.record(
                    elapsed_ms,
                    &[
                        KeyValue::new("rpc.service", service),
                        KeyValue::new("rpc.method", method),
                        KeyValue::new("rpc.grpc.status_code", code),
                    ],
                );
                result
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A traceparent carried into a span comes out of it with the same
    /// trace id, and a malformed one starts a fresh trace.
    #[test]
    fn trace_context_round_trips() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let span = tracing::info_span!("apply", trace_id = Empty);
            continue_trace(&span, incoming);
            let out = span.in_scope(current_traceparent);
            assert!(
                out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "same trace: {out}"
            );
            assert!(!out.contains("00f067aa0ba902b7"), "a new span id: {out}");

            let fresh = tracing::info_span!("apply", trace_id = Empty);
            continue_trace(&fresh, "not-a-traceparent");
            let out = fresh.in_scope(current_traceparent);
            assert!(
                !out.is_empty() && !out.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
                "{out}"
            );
        });
    }
}
