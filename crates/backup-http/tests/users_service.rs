//! The router with the users file's authenticator: passwords, tokens, roles,
//! client certificates, changes to the file while serving, and the login
//! throttle, as a client sees them.
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use backup_core::demo::build_demo;
use backup_core::Engine;
use backup_http::{router, Peer, Role, Service, UsersAuthenticator, UsersFile};
use base64::Engine as _;
use http_body_util::BodyExt;
use tower::ServiceExt;

const FP: &str = "3f1c0e8a4b2d6f7081920a1b2c3d4e5f60718293a4b5c6d7e8f9011223344556";

struct Fixture {
    _dir: tempfile::TempDir,
    users: UsersFile,
    app: axum::Router,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let demo = build_demo(&dir.path().join("demo"), 19).unwrap();
    let state = demo.config.appliance.state_dir.clone();
    let users = UsersFile::in_state_dir(&state);
    users
        .add_user("alice", Role::Admin, "alice pw", None)
        .unwrap();
    users
        .add_user("bob", Role::Auditor, "bob pw", None)
        .unwrap();
    users
        .add_user(
            "carol",
            Role::Admin,
            "carol pw",
            Some(&format!("sha256:{FP}")),
        )
        .unwrap();
    let engine = Arc::new(Engine::builder(demo.config).build().unwrap());
    let auth = Arc::new(UsersAuthenticator::in_state_dir(&state).unwrap());
    let app = router(Service::new(engine, auth));
    Fixture {
        _dir: dir,
        users,
        app,
    }
}

fn request(
    uri: &str,
    login: Option<(&str, &str)>,
    from: [u8; 4],
    cert: Option<&str>,
) -> Request<Body> {
    let mut r = Request::get(uri);
    if let Some((u, p)) = login {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        r = r.header(header::AUTHORIZATION, format!("Basic {token}"));
    }
    let mut r = r.body(Body::empty()).unwrap();
    r.extensions_mut().insert(Peer {
        address: SocketAddr::from((from, 40000)),
        client_cert_sha256: cert.map(str::to_string),
    });
    r
}

const HOME: [u8; 4] = [127, 0, 0, 1];
const ELSEWHERE: [u8; 4] = [192, 0, 2, 7];

async fn send(app: &axum::Router, r: Request<Body>) -> (StatusCode, axum::http::HeaderMap) {
    let response = app.clone().oneshot(r).await.unwrap();
    let (parts, body) = response.into_parts();
    let _ = body.collect().await;
    (parts.status, parts.headers)
}

async fn status_of(f: &Fixture, uri: &str, login: Option<(&str, &str)>) -> StatusCode {
    send(&f.app, request(uri, login, HOME, None)).await.0
}

#[tokio::test(flavor = "multi_thread")]
async fn users_tokens_and_roles_from_the_users_file() {
    let f = fixture();
    // An admin route that answers 404 once authorised: nothing is backed up.
    let admin_route = "/backup?node=not-this-node";
    assert_eq!(
        status_of(&f, "/status", Some(("alice", "alice pw"))).await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(&f, admin_route, Some(("alice", "alice pw"))).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(&f, "/status", Some(("bob", "bob pw"))).await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(&f, admin_route, Some(("bob", "bob pw"))).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status_of(&f, "/status", Some(("alice", "bob pw"))).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status_of(&f, "/status", Some(("nobody", "x"))).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status_of(&f, "/status", None).await,
        StatusCode::UNAUTHORIZED
    );

    // Tokens, created while the service runs, with their user's role.
    let cron = f.users.create_token("alice", "cron", None).unwrap();
    let mon = f.users.create_token("bob", "monitor", None).unwrap();
    let cron_login = Some(("alice!cron", cron.secret.as_str()));
    let mon_login = Some(("bob!monitor", mon.secret.as_str()));
    assert_eq!(
        status_of(&f, admin_route, cron_login).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(status_of(&f, "/status", mon_login).await, StatusCode::OK);
    assert_eq!(
        status_of(&f, admin_route, mon_login).await,
        StatusCode::FORBIDDEN
    );
    // Revoked: refused at the next request.
    f.users.delete_token("alice", "cron").unwrap();
    assert_eq!(
        status_of(&f, "/status", cron_login).await,
        StatusCode::UNAUTHORIZED
    );

    // A new password takes effect at once; a deleted user is gone.
    f.users.set_password("alice", "alice pw 2").unwrap();
    assert_eq!(
        status_of(&f, "/status", Some(("alice", "alice pw"))).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status_of(&f, "/status", Some(("alice", "alice pw 2"))).await,
        StatusCode::OK
    );
    f.users.delete_user("bob").unwrap();
    assert_eq!(
        status_of(&f, "/status", Some(("bob", "bob pw"))).await,
        StatusCode::UNAUTHORIZED
    );

    // A user with a client certificate: the right password alone is 403.
    let carol = Some(("carol", "carol pw"));
    assert_eq!(status_of(&f, "/status", carol).await, StatusCode::FORBIDDEN);
    let (s, _) = send(
        &f.app,
        request("/status", carol, HOME, Some(&"0".repeat(64))),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = send(&f.app, request("/status", carol, HOME, Some(FP))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = send(
        &f.app,
        request("/status", Some(("carol", "wrong")), HOME, Some(FP)),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_wrong_passwords_end_in_429_for_that_address_only() {
    let f = fixture();
    // Nine failures at once (each held back by the throttle, at most 8 s).
    let attempts: Vec<_> = (0..9)
        .map(|i| {
            let app = f.app.clone();
            tokio::spawn(async move {
                let wrong = format!("wrong {i}");
                send(
                    &app,
                    request("/status", Some(("alice", &wrong)), HOME, None),
                )
                .await
                .0
            })
        })
        .collect();
    for a in attempts {
        assert_eq!(a.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    // The 10th is refused before any verification, even with the right
    // password, and says when to come back.
    let (s, h) = send(
        &f.app,
        request("/status", Some(("alice", "alice pw")), HOME, None),
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = h[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=15 * 60).contains(&retry), "{retry}");
    // Never a lockout: alice from another address, and bob from this one.
    let (s, _) = send(
        &f.app,
        request("/status", Some(("alice", "alice pw")), ELSEWHERE, None),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        status_of(&f, "/status", Some(("bob", "bob pw"))).await,
        StatusCode::OK
    );
}
