//! The router on its own, driven in process (the end-to-end tests with real
//! clients, TLS and a browser are backup-cli's): what each route answers
//! whom, and that a streamed backup is a good image.
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use backup_core::demo::build_demo;
use backup_core::{Engine, KdfParams, Passphrase};
use backup_http::{router, Authenticator, Credentials, Denial, Peer, Principal, Role, Service};
use base64::Engine as _;
use http_body_util::BodyExt;
use tower::ServiceExt;

/// Two users with fixed passwords: the router is under test, not the users file.
struct TwoUsers;

#[async_trait]
impl Authenticator for TwoUsers {
    async fn authenticate(&self, c: &Credentials) -> Result<Principal, Denial> {
        let role = match (c.user.as_str(), c.password.as_str()) {
            ("root", "rootpw") => Role::Admin,
            ("audit", "auditpw") => Role::Auditor,
            _ => return Err(Denial::BadCredentials),
        };
        Ok(Principal {
            user: c.user.clone(),
            role,
            token: None,
        })
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    engine: Arc<Engine>,
    app: axum::Router,
}

fn fixture() -> Fixture {
    fixture_with(|_| {})
}

fn fixture_with(change: impl FnOnce(&mut backup_core::Config)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = build_demo(&dir.path().join("demo"), 19).unwrap();
    change(&mut demo.config);
    backup_core::init_keys(
        &demo.config.appliance.state_dir,
        &Passphrase::new("correct horse battery staple".into()).unwrap(),
        KdfParams::MINIMUM,
    )
    .unwrap();
    let engine = Arc::new(Engine::builder(demo.config.clone()).build().unwrap());
    let app = router(Service::new(engine.clone(), Arc::new(TwoUsers)));
    Fixture {
        _dir: dir,
        engine,
        app,
    }
}

fn get(uri: &str, user: Option<(&str, &str)>) -> Request<Body> {
    let mut r = Request::get(uri);
    if let Some((u, p)) = user {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        r = r.header(header::AUTHORIZATION, format!("Basic {token}"));
    }
    let mut r = r.body(Body::empty()).unwrap();
    r.extensions_mut().insert(Peer {
        address: SocketAddr::from(([127, 0, 0, 1], 40000)),
        client_cert_sha256: None,
    });
    r
}

const ADMIN: Option<(&str, &str)> = Some(("root", "rootpw"));
const AUDITOR: Option<(&str, &str)> = Some(("audit", "auditpw"));

async fn send(
    app: &axum::Router,
    r: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let response = app.clone().oneshot(r).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    (parts.status, parts.headers, bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn who_may_do_what() {
    let f = fixture();
    let node = f.engine.config().appliance.node.clone();
    let backup = format!("/backup?node={node}");
    let (s, h, _) = send(&f.app, get(&backup, None)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h[header::WWW_AUTHENTICATE],
        r#"Basic realm="backup", charset="UTF-8""#
    );
    let (s, _, _) = send(&f.app, get(&backup, Some(("root", "wrong")))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = send(&f.app, get(&backup, AUDITOR)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, body) = send(&f.app, get("/backup?node=elsewhere", ADMIN)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        String::from_utf8_lossy(&body).contains(&node),
        "names the known node"
    );
    let (s, _, _) = send(&f.app, get(&format!("{backup}&audits=maybe"), ADMIN)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = send(&f.app, get(&format!("{backup}&colour=red"), ADMIN)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, body) = send(&f.app, get("/healthz", None)).await;
    assert_eq!((s, &body[..]), (StatusCode::OK, &b"ok\n"[..]));
    for path in ["/status", "/images", "/metrics", "/"] {
        let (s, _, _) = send(&f.app, get(path, AUDITOR)).await;
        assert_eq!(s, StatusCode::OK, "{path} for an auditor");
    }
    let (s, _, _) = send(&f.app, get("/nowhere", ADMIN)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let audit = f.engine.audit_records(None).unwrap();
    let http: Vec<_> = audit.iter().filter(|r| r.operation == "http").collect();
    assert!(http
        .iter()
        .any(|r| r.actor == "http:-@127.0.0.1" && r.outcome == "refused"));
    assert!(http
        .iter()
        .any(|r| r.actor == "http:root@127.0.0.1" && r.outcome == "refused"));
    assert!(http
        .iter()
        .any(|r| r.actor == "http:audit@127.0.0.1" && r.outcome == "done"));
    let log =
        std::fs::read_to_string(f.engine.config().appliance.state_dir.join("audit.log")).unwrap();
    assert!(
        !log.contains("rootpw") && !log.contains("auditpw"),
        "no password in the audit log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_backup_is_a_stored_image_and_its_run_is_known() {
    let f = fixture();
    let node = f.engine.config().appliance.node.clone();
    let (s, h, body) = send(
        &f.app,
        get(&format!("/ssg/backup?node={node}&audits=true"), ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let disposition = h[header::CONTENT_DISPOSITION].to_str().unwrap().to_string();
    let run = h["x-backup-run"].to_str().unwrap().to_string();
    let images = f.engine.list().await.unwrap();
    assert_eq!(images.len(), 1, "stored too ([http] store_served)");
    assert_eq!(
        disposition,
        format!("attachment; filename=\"{}\"", images[0].name)
    );
    assert_eq!(images[0].size, body.len() as u64);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pulled.bkp");
    std::fs::write(&file, &body).unwrap();
    f.engine.verify(file.as_path()).await.unwrap();

    let (s, _, view) = send(&f.app, get(&format!("/runs/{run}"), AUDITOR)).await;
    assert_eq!(s, StatusCode::OK);
    let view: serde_json::Value = serde_json::from_slice(&view).unwrap();
    assert_eq!(view["outcome"], "success");
    assert_eq!(view["image"], images[0].name.as_str());

    // The stored image, whole and in part.
    let name = &images[0].name;
    let (s, h, whole) = send(&f.app, get(&format!("/images/{name}"), ADMIN)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(whole, body);
    let etag = h[header::ETAG].to_str().unwrap().to_string();
    let mut r = get(&format!("/images/{name}"), ADMIN);
    r.headers_mut()
        .insert(header::RANGE, "bytes=100-".parse().unwrap());
    r.headers_mut()
        .insert(header::IF_RANGE, etag.parse().unwrap());
    let (s, h, tail) = send(&f.app, r).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail, body[100..]);
    assert_eq!(
        h[header::CONTENT_RANGE].to_str().unwrap(),
        format!("bytes 100-{}/{}", body.len() - 1, body.len())
    );
    let (s, _, _) = send(&f.app, get(&format!("/images/{name}"), AUDITOR)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "downloads are for administrators");
}

fn post(uri: &str, user: Option<(&str, &str)>) -> Request<Body> {
    let mut r = get(uri, user);
    *r.method_mut() = axum::http::Method::POST;
    r.headers_mut()
        .insert(header::HOST, "gw.example:8443".parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_signs_its_own_links_for_a_storage_that_cannot_presign() {
    let f = fixture();
    let node = f.engine.config().appliance.node.clone();
    let (s, _, image) = send(&f.app, get(&format!("/backup?node={node}"), ADMIN)).await;
    assert_eq!(s, StatusCode::OK);
    let name = f.engine.list().await.unwrap()[0].name.clone();

    let (s, _, _) = send(&f.app, post(&format!("/images/{name}/link"), AUDITOR)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "links are for administrators");
    let (s, _, _) = send(
        &f.app,
        post(&format!("/images/{name}/link?expires=8d"), ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "at most 7 days");
    let (s, _, body) = send(&f.app, post(&format!("/images/{name}/link"), ADMIN)).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let link: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let url = link["url"].as_str().unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(link["expires"].as_str().unwrap()).unwrap();
    let hours = (expires.timestamp() - chrono::Utc::now().timestamp()) as f64 / 3600.0;
    assert!((5.9..=6.0).contains(&hours), "6 hours by default: {hours}");
    let path = url
        .strip_prefix("https://gw.example:8443")
        .expect("an absolute URL from the request's Host");
    let (s, _, got) = send(&f.app, get(path, None)).await;
    assert_eq!(s, StatusCode::OK, "a link needs no credentials");
    assert_eq!(got, image);
    let tampered = path.replace("exp=", "exp=1");
    let (s, _, _) = send(&f.app, get(&tampered, None)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (s, _, body) = send(
        &f.app,
        post(&format!("/images/{name}/link?expires=1s"), ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let short: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let short = short["url"]
        .as_str()
        .unwrap()
        .strip_prefix("https://gw.example:8443")
        .unwrap()
        .to_string();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (s, _, body) = send(&f.app, get(&short, None)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "expired");
    assert!(String::from_utf8_lossy(&body).contains("expired"));

    backup_http::rotate_link_key(&f.engine.config().appliance.state_dir).unwrap();
    let (s, _, _) = send(&f.app, get(path, None)).await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "rotating the link key revokes every link"
    );

    let mut r = get("/links.csv", ADMIN);
    r.headers_mut()
        .insert(header::HOST, "gw.example:8443".parse().unwrap());
    let (s, _, csv) = send(&f.app, r).await;
    assert_eq!(s, StatusCode::OK);
    let csv = String::from_utf8(csv).unwrap();
    assert!(
        csv.starts_with("image,node,role,created,size,url,expiry\n"),
        "{csv}"
    );
    assert!(csv.contains(&format!("{name},{node},")), "{csv}");

    let audit = f.engine.audit_records(None).unwrap();
    assert!(
        audit
            .iter()
            .any(|r| r.actor == "http:link@127.0.0.1" && r.outcome == "done"),
        "each use of a link is audited"
    );
    assert!(audit
        .iter()
        .any(|r| r.actor == "http:link@127.0.0.1" && r.outcome == "refused"));
    let log =
        std::fs::read_to_string(f.engine.config().appliance.state_dir.join("audit.log")).unwrap();
    assert!(!log.contains("sig="), "no link signature in the audit log");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failure_after_the_status_line_breaks_the_transfer_and_publishes_nothing() {
    // A component that fails after the image started to flow, with halt.
    let f = fixture_with(|config| {
        config.components.push(backup_core::ComponentConfig {
            name: "late".into(),
            kind: backup_core::ComponentKind::Command {
                backup: vec!["sh".into(), "-c".into(), "echo partial; exit 3".into()],
                restore: Vec::new(),
            },
            default: true,
            requires: Vec::new(),
            applicable_if_exists: None,
            audit: None,
            after_restore: Vec::new(),
            drill_check: Vec::new(),
        })
    });
    let node = f.engine.config().appliance.node.clone();
    let response = f
        .app
        .clone()
        .oneshot(get(&format!("/backup?node={node}&halt=true"), ADMIN))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the image had opened");
    let run = response.headers()["x-backup-run"]
        .to_str()
        .unwrap()
        .to_string();
    let body = response.into_body().collect().await;
    assert!(
        body.is_err(),
        "the body ends in an error, not its terminating chunk"
    );
    assert!(
        f.engine.list().await.unwrap().is_empty(),
        "nothing published"
    );
    let (s, _, view) = send(&f.app, get(&format!("/runs/{run}"), AUDITOR)).await;
    assert_eq!(s, StatusCode::OK);
    let view: serde_json::Value = serde_json::from_slice(&view).unwrap();
    assert_eq!(view["outcome"], "failed");
    assert!(view["reason"].as_str().unwrap().contains("late"), "{view}");

    // Without halt the same run is partial: the image restores without it.
    let (s, h, _) = send(&f.app, get(&format!("/backup?node={node}"), ADMIN)).await;
    assert_eq!(s, StatusCode::OK);
    let run = h["x-backup-run"].to_str().unwrap();
    let (_, _, view) = send(&f.app, get(&format!("/runs/{run}"), AUDITOR)).await;
    let view: serde_json::Value = serde_json::from_slice(&view).unwrap();
    assert_eq!(view["outcome"], "partial");
    assert_eq!(view["failed_components"], serde_json::json!(["late"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_backup_while_one_runs_is_refused_with_retry_after() {
    let f = fixture_with(|config| {
        config.components.push(backup_core::ComponentConfig {
            name: "slow".into(),
            kind: backup_core::ComponentKind::Command {
                backup: vec!["sh".into(), "-c".into(), "sleep 3; echo done".into()],
                restore: Vec::new(),
            },
            default: true,
            requires: Vec::new(),
            applicable_if_exists: None,
            audit: None,
            after_restore: Vec::new(),
            drill_check: Vec::new(),
        })
    });
    let node = f.engine.config().appliance.node.clone();
    let first = f
        .app
        .clone()
        .oneshot(get(&format!("/backup?node={node}"), ADMIN))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let (s, h, body) = send(&f.app, get(&format!("/backup?node={node}"), ADMIN)).await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(h.contains_key(header::RETRY_AFTER));
    let body = first.into_body().collect().await.unwrap().to_bytes();
    assert!(!body.is_empty());
    let status = f.engine.status().unwrap();
    assert!(
        status.last_skipped.is_some(),
        "the refused run is recorded as skipped"
    );
}

/// A storage that takes the image's first `limit` bytes and then fails, as
/// a storage that fills up or drops mid-run does; everything else is the
/// in-memory storage's.
#[derive(Debug)]
struct FailsMidRun {
    inner: backup_testkit::MemoryStorage,
    limit: u64,
}

impl std::fmt::Display for FailsMidRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a storage that fails mid-run")
    }
}

struct FailingUpload {
    inner: Box<dyn backup_storage::Upload>,
    left: u64,
}

#[async_trait]
impl backup_storage::Upload for FailingUpload {
    async fn write(&mut self, chunk: bytes::Bytes) -> backup_storage::Result<()> {
        if chunk.len() as u64 > self.left {
            return Err(backup_storage::Error::from_io(
                "writing to the storage",
                std::io::Error::other("the storage went away"),
            ));
        }
        self.left -= chunk.len() as u64;
        self.inner.write(chunk).await
    }
    async fn complete(self: Box<Self>) -> backup_storage::Result<backup_storage::ObjectMeta> {
        self.inner.complete().await
    }
    async fn abort(self: Box<Self>) -> backup_storage::Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl backup_storage::Storage for FailsMidRun {
    fn capabilities(&self) -> backup_storage::Capabilities {
        self.inner.capabilities()
    }
    async fn put_opts(
        &self,
        name: &str,
        opts: backup_storage::PutOptions,
    ) -> backup_storage::Result<Box<dyn backup_storage::Upload>> {
        let inner = self.inner.put_opts(name, opts).await?;
        if !name.ends_with(".bkp") {
            return Ok(inner);
        }
        Ok(Box::new(FailingUpload {
            inner,
            left: self.limit,
        }))
    }
    async fn get_opts(
        &self,
        name: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> backup_storage::Result<backup_storage::GetResult> {
        self.inner.get_opts(name, range).await
    }
    async fn head(&self, name: &str) -> backup_storage::Result<backup_storage::ObjectMeta> {
        self.inner.head(name).await
    }
    async fn list(
        &self,
        prefix: &str,
        delimited: bool,
    ) -> backup_storage::Result<backup_storage::ListResult> {
        self.inner.list(prefix, delimited).await
    }
    async fn delete(&self, name: &str) -> backup_storage::Result<()> {
        self.inner.delete(name).await
    }
    async fn capacity(&self) -> backup_storage::Result<backup_storage::Capacity> {
        self.inner.capacity().await
    }
    async fn presign_get(
        &self,
        name: &str,
        expires: std::time::Duration,
    ) -> backup_storage::Result<String> {
        self.inner.presign_get(name, expires).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storage_that_fails_mid_run_breaks_the_transfer_and_the_service_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let demo = build_demo(&dir.path().join("demo"), 19).unwrap();
    backup_core::init_keys(
        &demo.config.appliance.state_dir,
        &Passphrase::new("correct horse battery staple".into()).unwrap(),
        KdfParams::MINIMUM,
    )
    .unwrap();
    let memory = backup_testkit::MemoryStorage::default();
    let storage = Arc::new(FailsMidRun {
        inner: memory.clone(),
        limit: 2000,
    });
    let engine = Arc::new(
        Engine::builder(demo.config.clone())
            .storage(storage)
            .build()
            .unwrap(),
    );
    let app = router(Service::new(engine.clone(), Arc::new(TwoUsers)));
    let node = engine.config().appliance.node.clone();
    let response = app
        .clone()
        .oneshot(get(&format!("/backup?node={node}"), ADMIN))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let run = response.headers()["x-backup-run"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        response.into_body().collect().await.is_err(),
        "the transfer breaks"
    );
    assert!(
        memory.names().iter().all(|n| !n.ends_with(".bkp")),
        "nothing published under an image name: {:?}",
        memory.names()
    );
    let (_, _, view) = send(&app, get(&format!("/runs/{run}"), AUDITOR)).await;
    let view: serde_json::Value = serde_json::from_slice(&view).unwrap();
    assert_eq!(view["outcome"], "failed");
    assert!(
        view["reason"].as_str().unwrap().contains("went away"),
        "{view}"
    );
    let audit = engine.audit_records(None).unwrap();
    assert!(
        audit.iter().any(|r| r.operation == "http"
            && r.outcome == "failed"
            && r.actor == "http:root@127.0.0.1"),
        "the request is audited as failed"
    );
    let (s, _, _) = send(&app, get("/status", AUDITOR)).await;
    assert_eq!(s, StatusCode::OK, "the service goes on serving");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_offers_backups_and_downloads_to_administrators_only() {
    let f = fixture();
    let node = f.engine.config().appliance.node.clone();
    let (s, _, _) = send(&f.app, get(&format!("/backup?node={node}"), ADMIN)).await;
    assert_eq!(s, StatusCode::OK);
    let name = f.engine.list().await.unwrap()[0].name.clone();
    let (s, h, page) = send(&f.app, get("/", ADMIN)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = String::from_utf8(page).unwrap();
    for needle in [
        format!("id=\"include-audits-{node}\""),
        format!("id=\"backup-{node}\""),
        format!("href=\"/images/{name}\""),
        "Copy link".to_string(),
        "Last success".to_string(),
        "schedule disabled".to_string(),
    ] {
        assert!(page.contains(&needle), "the admin's page has {needle}");
    }
    let (s, _, page) = send(&f.app, get("/", AUDITOR)).await;
    assert_eq!(s, StatusCode::OK);
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains(&name), "an auditor sees the images");
    assert!(
        !page.contains("Back up</button>") && !page.contains("Download"),
        "but no actions"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_for_auditors_unless_made_public() {
    let f = fixture();
    let (s, _, _) = send(&f.app, get("/metrics", None)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, text) = send(&f.app, get("/metrics", AUDITOR)).await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("backup_lock_held{node=\"gw-1\"} 0"), "{text}");
    assert!(
        text.contains("backup_runs_total{node=\"gw-1\",outcome=\"success\"} 0"),
        "{text}"
    );

    let public = fixture_with(|c| c.http.metrics_public = true);
    let (s, _, _) = send(&public.app, get("/metrics", None)).await;
    assert_eq!(s, StatusCode::OK, "metrics_public: no credentials needed");
    let (s, _, _) = send(&public.app, get("/status", None)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the rest stays protected");
}
