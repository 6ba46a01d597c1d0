//! Production-style tokens over real gRPC: RS256 tokens verified against a
//! JWKS file, with a custom tenant claim, the services calling each other
//! with the token of `auth.service_token_file`, a rotated key picked up at
//! once, and every bad token refused with the same generic answer.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use milestones_api::goal as g;
use milestones_api::progress as p;
use milestones_suite::{eventually, fresh_database_url, test_settings, TestApp};
use serde_json::{json, Value};
use tonic::Code;

use crate::fixtures::*;

const RS256_DER: &[u8] = include_bytes!("../fixtures/jwt/rs256-private.der");
const RS256_OTHER_DER: &[u8] = include_bytes!("../fixtures/jwt/rs256-other-private.der");
const ISSUER: &str = "https://idp.milestones.test";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64
}

/// Writes a JWKS holding the public halves of `keys` (DER, kid) to `path`.
fn write_jwks(path: &Path, keys: &[(&[u8], &str)]) {
    let keys = keys
        .iter()
        .map(|(der, kid)| {
            let mut jwk = Jwk::from_encoding_key(&EncodingKey::from_rsa_der(der), Algorithm::RS256).expect("jwk");
            jwk.common.key_id = Some(kid.to_string());
            jwk
        })
        .collect();
    std::fs::write(path, serde_json::to_vec(&JwkSet { keys }).expect("json")).expect("write jwks");
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, key).expect("sign")
}

fn rs256(der: &[u8], kid: &str, claims: &Value) -> String {
    sign(Algorithm::RS256, &EncodingKey::from_rsa_der(der), Some(kid), claims)
}

/// Claims as the identity provider would issue them: the tenant in `org`.
fn claims(org: &str, sub: &str, roles: &[&str]) -> Value {
    let now = now();
    json!({
        "iss": ISSUER, "aud": "milestones", "sub": sub, "org": org, "roles": roles,
        "iat": now, "nbf": now - 5, "exp": now + 600,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

/// A folder of its own for one test's keys and tokens.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join("milestones-tests")
        .join(format!("{name}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Goal and progress verifying RS256 tokens from `dir/jwks.json` (key
/// `rsa-1`), calling each other with the token in `dir/service-token`.
async fn jwks_app(dir: &Path) -> TestApp {
    write_jwks(&dir.join("jwks.json"), &[(RS256_DER, "rsa-1")]);
    let service = rs256(RS256_DER, "rsa-1", &claims("*", "milestones-services", &["service"]));
    std::fs::write(dir.join("service-token"), format!("{service}\n")).expect("service token");
    let mut settings = test_settings(fresh_database_url().await, fresh_database_url().await, String::new());
    settings.auth.algorithm = "RS256".into();
    settings.auth.jwks_file = dir.join("jwks.json");
    settings.auth.issuer = ISSUER.into();
    settings.auth.tenant_claim = "org".into();
    settings.auth.leeway_secs = 5;
    settings.auth.service_token_file = dir.join("service-token");
    assert!(settings.problems().is_empty(), "{:?}", settings.problems());
    TestApp::launch(settings, &["goal", "progress"], None).await
}

/// Good RS256 tokens work for callers and for the services' own calls
/// (progress consumes goal's feed; goal's assessment reads progress for one
/// tenant); a rotated key works at once; each bad token is UNAUTHENTICATED
/// with the same message, which never echoes the token.
#[tokio::test]
async fn rs256_tokens_against_a_jwks_file_over_grpc() {
    let dir = scratch("tokens");
    let app = jwks_app(&dir).await;
    let admin = rs256(RS256_DER, "rsa-1", &claims("acme", "boss", &["admin"]));
    let mut goal = app.goal_with_token(Some(admin.clone())).await;
    let sales = team(&mut goal, "Sales", "").await;
    let arr = revenue_metric(&mut goal, "ARR").await;
    let m = create_milestone(
        &mut goal,
        milestone_in(&sales.name, &arr.name, "FY2027-Q1", 1_000),
        true,
    )
    .await
    .expect("milestone");

    // Progress learned the milestone from goal's feed, read with the
    // service token.
    let mut progress = milestones_api::progress::progress_service_client::ProgressServiceClient::with_interceptor(
        app.channel().await,
        milestones_suite::Bearer::new(Some(&admin)),
    );
    eventually("progress to track the milestone", || {
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
        "goal read progress with its service token, acting in acme: {}",
        assessment.explanation
    );
    progress
        .list_activities(p::ListActivitiesRequest::default())
        .await
        .expect("a read with the same token");

    // The identity provider rotates to a new key: the first token signed
    // with it makes the server read the JWKS again.
    write_jwks(
        &dir.join("jwks.json"),
        &[(RS256_DER, "rsa-1"), (RS256_OTHER_DER, "rsa-2")],
    );
    let rotated = rs256(RS256_OTHER_DER, "rsa-2", &claims("acme", "boss", &["admin"]));
    let mut c = app.goal_with_token(Some(rotated)).await;
    c.list_teams(g::ListTeamsRequest::default())
        .await
        .expect("a token signed with the new key");

    let now = now();
    let good = claims("acme", "boss", &["admin"]);
    let payload = admin.split('.').nth(1).expect("payload").to_string();
    let dev_secret = app.settings.auth.to_config();
    let bad: Vec<(&str, String)> = vec![
        (
            "expired",
            rs256(RS256_DER, "rsa-1", &with(good.clone(), "exp", json!(now - 60))),
        ),
        (
            "not yet valid",
            rs256(RS256_DER, "rsa-1", &with(good.clone(), "nbf", json!(now + 600))),
        ),
        (
            "wrong audience",
            rs256(RS256_DER, "rsa-1", &with(good.clone(), "aud", json!("another-system"))),
        ),
        (
            "wrong issuer",
            rs256(
                RS256_DER,
                "rsa-1",
                &with(good.clone(), "iss", json!("https://evil.test")),
            ),
        ),
        ("unknown kid", rs256(RS256_OTHER_DER, "rsa-9", &good)),
        ("signed by another key", rs256(RS256_OTHER_DER, "rsa-1", &good)),
        ("alg none", format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.")),
        (
            "HS256 with the development secret",
            milestones_runtime::auth::mint_token(
                &dev_secret,
                "acme",
                "boss",
                &[milestones_runtime::auth::Role::Admin],
                std::time::Duration::from_secs(600),
            )
            .expect("mint"),
        ),
        (
            "tenant in the default claim only",
            rs256(
                RS256_DER,
                "rsa-1",
                &json!({"iss": ISSUER, "aud": "milestones", "sub": "boss", "tenant": "acme",
                    "roles": ["admin"], "exp": now + 600}),
            ),
        ),
    ];
    let mut messages = std::collections::HashSet::new();
    for (what, token) in bad {
        let mut c = app.goal_with_token(Some(token.clone())).await;
        let status = c.list_teams(g::ListTeamsRequest::default()).await.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert_eq!(reason(&status), "UNAUTHENTICATED", "{what}");
        assert!(!status.message().contains(&token), "{what}");
        messages.insert(status.message().to_string());
    }
    assert_eq!(messages.len(), 1, "one generic message: {messages:?}");
    app.stop().await;
}
