//! Export over OTLP/gRPC to a collector, as `telemetry.otlp_endpoint`
//! configures it for a server.
//!
//! A separate test binary: it installs the process-wide tracing subscriber
//! and meter provider. The collector is a real gRPC server in the test,
//! speaking the OpenTelemetry collector protocol (the generated
//! `TraceService` and `MetricsService`); it keeps what it is sent.

use std::sync::{Arc, Mutex};

use milestones_api::goal as g;
use milestones_runtime::auth::Role;
use milestones_runtime::config::{LogSettings, TelemetrySettings};
use milestones_suite::{eventually, TestApp};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use tonic::{Request, Response, Status};

/// What the collector was sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.spans.lock().expect("spans").push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.metrics.lock().expect("metrics").push(request.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// The `service.name` a resource names.
fn service_name(resource: &Option<Resource>) -> Option<String> {
    resource
        .as_ref()?
        .attributes
        .iter()
        .find_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) if kv.key == "service.name" => Some(s.clone()),
            _ => None,
        })
}

impl Collector {
    /// (service name, span name) of every span received.
    fn span_names(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for request in self.spans.lock().expect("spans").iter() {
            for rs in &request.resource_spans {
                let service = service_name(&rs.resource).unwrap_or_default();
                for ss in &rs.scope_spans {
                    out.extend(ss.spans.iter().map(|s| (service.clone(), s.name.clone())));
                }
            }
        }
        out
    }

    /// (service name, metric name) of every metric received.
    fn metric_names(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for request in self.metrics.lock().expect("metrics").iter() {
            for rm in &request.resource_metrics {
                let service = service_name(&rm.resource).unwrap_or_default();
                for sm in &rm.scope_metrics {
                    out.extend(sm.metrics.iter().map(|m| (service.clone(), m.name.clone())));
                }
            }
        }
        out
    }
}

/// A server configured with a collector exports its RPC spans and its
/// metrics there, named by `telemetry.service_name`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_reach_an_otlp_collector() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serving = collector.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(serving.clone()))
            .add_service(MetricsServiceServer::new(serving))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .expect("collector");
    });

    let telemetry = milestones_runtime::telemetry::start(
        &LogSettings {
            format: "pretty".into(),
            filter: "warn".into(),
        },
        &TelemetrySettings {
            otlp_endpoint: format!("http://{addr}"),
            service_name: "milestones-otlp-test".into(),
            metrics_interval_secs: 1,
        },
    )
    .expect("telemetry starts");

    let app = TestApp::spawn().await;
    let mut goal = app.goal("acme", &[Role::Admin]).await;
    goal.create_team(g::CreateTeamRequest {
        team: Some(g::Team {
            display_name: "Sales".into(),
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .expect("create team");

    // Spans leave in batches, metrics every second: wait for both.
    let rpc = "milestones.goal.v1.GoalService/CreateTeam".to_string();
    let service = "milestones-otlp-test".to_string();
    eventually("the CreateTeam span at the collector", || {
        let names = collector.span_names();
        let found = names.contains(&(service.clone(), rpc.clone()));
        async move { found.then_some(()) }
    })
    .await;
    eventually("the RPC duration metric at the collector", || {
        let names = collector.metric_names();
        let found = names.contains(&(service.clone(), "rpc.server.duration".to_string()));
        async move { found.then_some(()) }
    })
    .await;
    app.stop().await;
    // Whatever is still buffered is sent at shutdown, without error.
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .expect("shutdown");
}
