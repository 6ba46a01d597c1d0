//! One trace id spans goal → progress → recognition.
//!
//! A separate test binary: it installs the process-wide tracing subscriber,
//! with an in-memory span exporter, which the main suite must not share.
//!
//! A client sends a W3C `traceparent` with CreateMilestone and with the
//! RecordActivity that achieves it. The spans that follow must all be in
//! that trace: goal's RPC, its realism call to progress, progress and
//! recognition applying goal's change event, progress's RecordActivity, and
//! recognition applying the milestone event that awards the badge.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use chrono::{Days, Utc};
use milestones_api::goal as g;
use milestones_api::goal::goal_service_client::GoalServiceClient;
use milestones_api::progress as p;
use milestones_api::progress::progress_service_client::ProgressServiceClient;
use milestones_api::recognition as r;
use milestones_api::Date;
use milestones_runtime::auth::Role;
use milestones_runtime::config::LogSettings;
use milestones_suite::{eventually, TestApp};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Keeps every finished span.
#[derive(Clone, Debug, Default)]
struct Collected(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collected {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().expect("spans").extend(batch);
        Ok(())
    }
}

impl Collected {
    /// (span name, `feed` attribute) of the finished spans in `trace_id`.
    fn in_trace(&self, trace_id: &str) -> BTreeSet<String> {
        self.0
            .lock()
            .expect("spans")
            .iter()
            .filter(|s| s.span_context.trace_id().to_string() == trace_id)
            .map(|s| s.name.to_string())
            .collect()
    }
}

/// Sends a bearer token and a fixed `traceparent`.
#[derive(Clone)]
struct Traced {
    token: String,
    traceparent: Option<String>,
}

impl Interceptor for Traced {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let auth = format!("Bearer {}", self.token).parse().expect("ascii token");
        req.metadata_mut().insert("authorization", auth);
        if let Some(tp) = &self.traceparent {
            req.metadata_mut().insert("traceparent", tp.parse().expect("ascii"));
        }
        Ok(req)
    }
}

fn wire(d: chrono::NaiveDate) -> Option<Date> {
    use chrono::Datelike;
    Some(Date {
        year: d.year(),
        month: d.month() as i32,
        day: d.day() as i32,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_goal_progress_and_recognition() {
    let spans = Collected::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(spans.clone()).build();
    let installed = milestones_runtime::telemetry::install(
        &LogSettings {
            format: "pretty".into(),
            filter: "warn".into(),
        },
        provider.clone(),
    );
    assert!(installed, "this test binary installs the only subscriber");

    let app = TestApp::spawn_all().await;
    let channel = app.channel().await;
    let admin = app.token("acme", "boss", &[Role::Admin]);
    let plain = |token: &str| Traced {
        token: token.to_string(),
        traceparent: None,
    };
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traced = |token: &str| Traced {
        token: token.to_string(),
        traceparent: Some(format!("00-{trace_id}-00f067aa0ba902b7-01")),
    };

    // The org, a metric, a badge and a rule, outside the trace.
    let mut goal = GoalServiceClient::with_interceptor(channel.clone(), plain(&admin));
    let ada = goal
        .create_member(g::CreateMemberRequest {
            member: Some(g::Member {
                display_name: "Ada".into(),
                email: "ada@example.com".into(),
                role: g::MemberRole::Rep as i32,
                subject: "ada".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("member")
        .into_inner();
    let arr = goal
        .create_metric(g::CreateMetricRequest {
            metric: Some(g::Metric {
                display_name: "New ARR".into(),
                unit: g::MetricUnit::Currency as i32,
                currency_code: "EUR".into(),
                aggregation: g::MetricAggregation::Sum as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("metric")
        .into_inner();
    let mut reco = app.recognition("acme", &[Role::Admin]).await;
    let badge = reco
        .create_badge(r::CreateBadgeRequest {
            badge: Some(r::Badge {
                display_name: "Closer".into(),
                tier: r::BadgeTier::Gold as i32,
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .expect("badge")
        .into_inner();
    reco.create_rule(r::CreateRuleRequest {
        rule: Some(r::Rule {
            display_name: "Target reached".into(),
            enabled: true,
            trigger: r::RuleTrigger::MilestoneAchieved as i32,
            badge: badge.name.clone(),
            points: 10,
            visibility: r::Visibility::Public as i32,
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .expect("rule");

    // In the trace: the milestone, then the deal that achieves it.
    let today = Utc::now().date_naive();
    let mut traced_goal = GoalServiceClient::with_interceptor(channel.clone(), traced(&admin));
    let milestone = traced_goal
        .create_milestone(g::CreateMilestoneRequest {
            milestone: Some(g::Milestone {
                display_name: "Ada's quarter".into(),
                owner: ada.name.clone(),
                metric: arr.name.clone(),
                start_date: wire(today - Days::new(5)),
                end_date: wire(today + Days::new(20)),
                target: 1_000,
                ..Default::default()
            }),
            activate: true,
            request_id: String::new(),
        })
        .await
        .expect("milestone")
        .into_inner();
    let service = app.token("acme", "crm", &[Role::Service]);
    let traced_progress = ProgressServiceClient::with_interceptor(channel.clone(), traced(&service));
    let progress_name = format!("{}/progress", milestone.name);
    eventually("progress to track the milestone", || {
        let mut c = traced_progress.clone();
        let name = progress_name.clone();
        async move { c.get_progress(p::GetProgressRequest { name }).await.ok() }
    })
    .await;
    let now = Utc::now();
    traced_progress
        .clone()
        .record_activity(p::RecordActivityRequest {
            member: ada.name.clone(),
            metric: arr.name.clone(),
            value: 1_000,
            occurred_at: Some(prost_types::Timestamp {
                seconds: now.timestamp(),
                nanos: 0,
            }),
            source: "crm".into(),
            request_id: "deal-1".into(),
            ..Default::default()
        })
        .await
        .expect("record");
    eventually("the badge to be awarded", || {
        let mut c = reco.clone();
        async move {
            let list = c
                .list_recognitions(r::ListRecognitionsRequest::default())
                .await
                .ok()?
                .into_inner();
            (!list.recognitions.is_empty()).then_some(())
        }
    })
    .await;

    let expected = [
        "milestones.goal.v1.GoalService/CreateMilestone",
        "milestones.progress.v1.ProgressService/GetPerformanceHistory",
        "apply goal.changes",
        "milestones.progress.v1.ProgressService/RecordActivity",
        "apply progress.milestone_events",
    ];
    let seen = eventually("the spans of the trace", || {
        let spans = spans.clone();
        async move {
            let seen = spans.in_trace(trace_id);
            expected.iter().all(|e| seen.contains(*e)).then_some(seen)
        }
    })
    .await;
    let applied_goal_changes = spans
        .0
        .lock()
        .expect("spans")
        .iter()
        .filter(|s| s.span_context.trace_id().to_string() == trace_id && s.name == "apply goal.changes")
        .filter_map(|s| {
            s.attributes
                .iter()
                .find(|kv| kv.key.as_str() == "consumer")
                .map(|kv| kv.value.to_string())
        })
        .collect::<BTreeSet<_>>();
    assert_eq!(
        applied_goal_changes,
        ["progress".to_string(), "recognition".to_string()].into(),
        "both consumers of goal's feed continue the trace; spans: {seen:?}"
    );
    // Calls without a traceparent start traces of their own.
    let other_traces: BTreeSet<String> = spans
        .0
        .lock()
        .expect("spans")
        .iter()
        .filter(|s| s.name == "milestones.goal.v1.GoalService/CreateMember")
        .map(|s| s.span_context.trace_id().to_string())
        .collect();
    assert_eq!(other_traces.len(), 1, "one CreateMember span");
    assert!(!other_traces.contains(trace_id));
    app.stop().await;
    let _ = provider.shutdown();
}
