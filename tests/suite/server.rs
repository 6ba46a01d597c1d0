//! The server around the services: health, reflection, shutdown.

use milestones_runtime::db::Db;
use milestones_suite::{fresh_database_url, TestApp};
use sea_orm::ConnectionTrait;
use tokio_stream::StreamExt;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

/// Health reports the goal service SERVING without a token, and reflection
/// lists the goal service and the health service.
#[tokio::test]
async fn health_and_reflection_are_served() {
    let app = TestApp::spawn().await;
    let mut health = HealthClient::new(app.channel().await);
    for service in ["", "milestones.goal.v1.GoalService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(status, 1, "{service:?} is SERVING");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope.v1.Nothing".into(),
        })
        .await;
    assert_eq!(unknown.expect_err("unknown service").code(), tonic::Code::NotFound);

    let mut reflection = ServerReflectionClient::new(app.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.next().await.expect("one response").expect("ok");
    let services: Vec<String> = match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection response {other:?}"),
    };
    assert!(
        services.contains(&"milestones.goal.v1.GoalService".to_string()),
        "{services:?}"
    );
    assert!(services.contains(&"grpc.health.v1.Health".to_string()), "{services:?}");
    app.stop().await;
}

/// Replicas that start together (or a migration Job beside them) migrate
/// one at a time: every concurrent run succeeds, each migration is recorded
/// once, and running again changes nothing.
#[tokio::test]
async fn concurrent_migrations_apply_once() {
    for service in ["goal", "progress", "recognition"] {
        let url = fresh_database_url().await;
        let mut replicas = Vec::new();
        for _ in 0..4 {
            replicas.push(Db::connect(&url, 2).await.expect("connect"));
        }
        let migrate = |db: Db| async move {
            match service {
                "goal" => milestones_goal::migrate(&db).await,
                "progress" => milestones_progress::migrate(&db).await,
                _ => milestones_recognition::migrate(&db).await,
            }
        };
        let results = futures::future::join_all(replicas.iter().cloned().map(migrate)).await;
        for r in &results {
            assert!(r.is_ok(), "{service}: every replica's migration succeeds: {r:?}");
        }
        let count = |db: Db| async move {
            let row = db
                .conn()
                .query_one(sea_orm::Statement::from_string(
                    db.backend(),
                    format!("SELECT COUNT(*) AS n, COUNT(DISTINCT version) AS d FROM {service}_migrations"),
                ))
                .await
                .expect("count")
                .expect("a row");
            (
                row.try_get::<i64>("", "n").expect("n"),
                row.try_get::<i64>("", "d").expect("d"),
            )
        };
        let (n, distinct) = count(replicas[0].clone()).await;
        assert!(n > 0, "{service}: migrations recorded");
        assert_eq!(n, distinct, "{service}: each migration recorded once");
        migrate(replicas[1].clone()).await.expect("a second run is a no-op");
        assert_eq!(count(replicas[2].clone()).await, (n, distinct), "{service}: unchanged");
    }
}

/// Shutdown drains: health flips to NOT_SERVING first, a call already in
/// flight completes, open feeds end cleanly, and once the drain time is
/// over new calls are refused.
#[tokio::test]
async fn shutdown_drains_in_flight_calls() {
    use milestones_api::goal as g;
    use milestones_runtime::auth::Role;
    use sea_orm::{ConnectOptions, Database};

    let mut settings =
        milestones_suite::test_settings(fresh_database_url().await, fresh_database_url().await, String::new());
    settings.grpc.shutdown_drain_ms = 1_000;
    settings.grpc.shutdown_grace_secs = 20;
    let mut app = TestApp::launch(settings, &["goal"], None).await;
    let mut goal = app.goal("acme", &[Role::Admin]).await;
    goal.create_team(g::CreateTeamRequest {
        team: Some(g::Team {
            display_name: "Sales".into(),
            ..Default::default()
        }),
        request_id: String::new(),
    })
    .await
    .expect("a first team");
    let mut feed = goal
        .watch_changes(g::WatchChangesRequest { after_sequence: 0 })
        .await
        .expect("feed")
        .into_inner();

    // Another session holds the teams table, so the next write waits.
    let mut options = ConnectOptions::new(app.database_url.clone());
    options.max_connections(1).sqlx_logging(false);
    let blocker = Database::connect(options).await.expect("blocker");
    match blocker.get_database_backend() {
        sea_orm::DatabaseBackend::Postgres => {
            blocker.execute_unprepared("BEGIN").await.expect("begin");
            blocker
                .execute_unprepared("LOCK TABLE teams IN ACCESS EXCLUSIVE MODE")
                .await
                .expect("lock");
        }
        _ => {
            blocker.execute_unprepared("BEGIN EXCLUSIVE").await.expect("lock");
        }
    }
    let in_flight = tokio::spawn({
        let mut goal = goal.clone();
        async move {
            goal.create_team(g::CreateTeamRequest {
                team: Some(g::Team {
                    display_name: "EMEA".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!in_flight.is_finished(), "the write waits for the lock");

    app.begin_shutdown();
    let mut health = HealthClient::new(app.channel().await);
    let status = health
        .check(HealthCheckRequest { service: String::new() })
        .await
        .expect("health during the drain")
        .into_inner()
        .status;
    assert_eq!(status, 2, "NOT_SERVING as soon as shutdown starts");
    // The feed ends with UNAVAILABLE, which tells a consumer to resume
    // from its cursor on another replica (not a broken connection).
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match feed.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the feed ends at shutdown");
    let status = ended.expect_err("the feed says why it ended");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("reconnect with your cursor"), "{status:?}");

    // After the drain the listener is closed: a new call is refused.
    tokio::time::sleep(std::time::Duration::from_millis(1_300)).await;
    let refused = tonic::transport::Channel::from_shared(app.endpoint())
        .expect("endpoint")
        .connect()
        .await;
    assert!(refused.is_err(), "no new connections after the drain");
    assert!(!in_flight.is_finished(), "still waiting for the lock");

    // The call in flight completes once the lock is released.
    blocker.execute_unprepared("COMMIT").await.expect("release");
    let team = in_flight
        .await
        .expect("task")
        .expect("the in-flight call completes")
        .into_inner();
    assert_eq!(team.display_name, "EMEA");
    app.stop().await;
}
