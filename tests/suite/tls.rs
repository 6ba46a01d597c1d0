//! Mutual TLS over real gRPC: a test CA signs the server's certificate
//! (also the services' client identity when they call each other) and a
//! client's; a client without a certificate, or with one from another CA,
//! is refused at the handshake, while the services' own feeds and history
//! calls run over mTLS. Health answers in plaintext on a second port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use milestones_api::goal as g;
use milestones_api::goal::goal_service_client::GoalServiceClient;
use milestones_api::progress as p;
use milestones_api::progress::progress_service_client::ProgressServiceClient;
use milestones_runtime::auth::Role;
use milestones_runtime::config::Settings;
use milestones_suite::{eventually, fresh_database_url, test_settings, Bearer};
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::fixtures::*;
use crate::test_ca::TestCa;

/// A folder of its own for one test's PEM files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join("milestones-tests")
        .join(format!("{name}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write pem");
    path
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A running suite serving mTLS.
struct TlsApp {
    addr: SocketAddr,
    settings: Settings,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TlsApp {
    async fn start(settings: Settings, services: &[&str]) -> TlsApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let services: Vec<String> = services.iter().map(|s| s.to_string()).collect();
        let run_settings = settings.clone();
        let server = tokio::spawn(async move {
            milestones::suite::run(run_settings, &services, listener, async {
                let _ = rx.await;
            })
            .await
        });
        TlsApp {
            addr,
            settings,
            shutdown: Some(tx),
            server,
        }
    }

    /// A channel presenting `identity` (or none), trusting `ca`.
    async fn channel(&self, ca: &str, identity: Option<(&str, &str)>) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Channel::from_shared(format!("https://{}", self.addr))
            .expect("url")
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
    }

    fn token(&self, tenant: &str, roles: &[Role]) -> String {
        milestones_runtime::auth::mint_token(
            &self.settings.auth.to_config(),
            tenant,
            "tester",
            roles,
            Duration::from_secs(600),
        )
        .expect("mint")
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server.await.expect("server task").expect("server exits cleanly");
    }
}

/// Health over the plaintext health port, once it answers.
async fn health_status(port: u16, service: &str) -> i32 {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    eventually("the plaintext health port to answer", || async move {
        let ch = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .ok()?
            .connect()
            .await
            .ok()?;
        HealthClient::new(ch)
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .ok()
            .map(|r| r.into_inner().status)
            .filter(|s| *s == 1)
    })
    .await
}

/// With mutual TLS: a client whose certificate the CA signed is served,
/// and the services' own calls (progress reading goal's feed, goal reading
/// progress's history for an assessment) work over mTLS; a client without
/// a certificate, with one from another CA, or in plaintext is refused.
#[tokio::test]
async fn mutual_tls_admits_only_clients_the_ca_signed() {
    let dir = scratch("tls");
    let ca = TestCa::new("Milestones Test CA");
    let (server_cert, server_key) = ca.issue("milestones", &["localhost", "127.0.0.1"]);
    let (client_cert, client_key) = ca.issue("crm-connector", &["crm-connector"]);
    let rogue_ca = TestCa::new("Rogue CA");
    let (rogue_cert, rogue_key) = rogue_ca.issue("mallory", &["mallory"]);

    let mut settings = test_settings(fresh_database_url().await, fresh_database_url().await, String::new());
    settings.tls.cert_file = write(&dir, "server.pem", &server_cert);
    settings.tls.key_file = write(&dir, "server.key", &server_key);
    settings.tls.client_ca_file = write(&dir, "ca.pem", &ca.pem());
    settings.tls.ca_file = settings.tls.client_ca_file.clone();
    let health_port = free_port();
    settings.grpc.health_listen_addr = format!("127.0.0.1:{health_port}");
    assert!(settings.problems().is_empty(), "{:?}", settings.problems());
    let app = TlsApp::start(settings, &["goal", "progress"]).await;
    health_status(health_port, milestones_goal::SERVICE_NAME).await;

    let ca_pem = ca.pem();
    let channel = app
        .channel(&ca_pem, Some((&client_cert, &client_key)))
        .await
        .expect("a client the CA signed connects");
    let admin = app.token("acme", &[Role::Admin]);
    let mut goal = GoalServiceClient::with_interceptor(channel.clone(), Bearer::new(Some(&admin)));
    let sales = team(&mut goal, "Sales", "").await;
    let arr = revenue_metric(&mut goal, "ARR").await;
    let m = create_milestone(
        &mut goal,
        milestone_in(&sales.name, &arr.name, "FY2027-Q1", 1_000),
        true,
    )
    .await
    .expect("milestone");
    let progress = ProgressServiceClient::with_interceptor(channel, Bearer::new(Some(&admin)));
    eventually("progress to learn the milestone over goal's feed, over mTLS", || {
        let mut c = progress.clone();
        let name = format!("{}/progress", m.name);
        async move { c.get_progress(p::GetProgressRequest { name }).await.ok() }
    })
    .await;
    // Goal reads the owner's history from progress, for acme, with its
    // own token (once progress knows the milestone's owner and metric).
    let assessment = goal
        .assess_milestone(g::AssessMilestoneRequest { name: m.name.clone() })
        .await
        .expect("assess")
        .into_inner();
    assert_ne!(
        assessment.realism,
        g::Realism::Unavailable as i32,
        "goal reached progress over mTLS: {}",
        assessment.explanation
    );

    // Refused: no certificate, a certificate from another CA, plaintext.
    let no_cert = app.channel(&ca_pem, None).await;
    let rogue = app.channel(&ca_pem, Some((&rogue_cert, &rogue_key))).await;
    for (what, channel) in [("no client certificate", no_cert), ("another CA's certificate", rogue)] {
        if let Ok(channel) = channel {
            // With TLS 1.3 the client may finish its side of the handshake
            // before the server refuses the certificate: the call fails.
            let mut c = GoalServiceClient::with_interceptor(channel, Bearer::new(Some(&admin)));
            let result = c.list_teams(g::ListTeamsRequest::default()).await;
            let status = result.expect_err(what);
            assert!(
                matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ),
                "{what}: refused at the transport, not by a handler: {status:?}"
            );
        }
    }
    let plaintext = Channel::from_shared(format!("http://{}", app.addr))
        .expect("url")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        let mut c = GoalServiceClient::with_interceptor(channel, Bearer::new(Some(&admin)));
        c.list_teams(g::ListTeamsRequest::default())
            .await
            .expect_err("plaintext is refused");
    }
    app.stop().await;
}
