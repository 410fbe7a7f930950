//! Mounting the backup service inside an appliance's own web server.
//!
//! The appliance already serves its management UI with axum and has its own
//! user database. It mounts the backup service's router under `/backup`,
//! answers the service's `Authenticator` from that database, and serves
//! both on one listener. (A real product terminates TLS in front of it, as
//! `backup serve` does with rustls; this example speaks plain HTTP on
//! 127.0.0.1 to stay short.) It then pulls a fresh backup through its own
//! server, as a cron job would, and verifies it.
//!
//! Run: `cargo run -p backup-examples --example embed_http`
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use backup_core::{Engine, KdfParams, Passphrase};
use backup_http::{Authenticator, Credentials, Denial, Principal, Role, Service};
use http_body_util::BodyExt;

/// The product's own user database (here: one operator in memory).
struct ProductUsers;

#[async_trait::async_trait]
impl Authenticator for ProductUsers {
    async fn authenticate(&self, c: &Credentials) -> Result<Principal, Denial> {
        // A real product checks its own password hashes here.
        if c.user == "operator" && c.password.as_str() == "operator-password" {
            Ok(Principal {
                user: c.user.clone(),
                role: Role::Admin,
                token: None,
            })
        } else {
            Err(Denial::BadCredentials)
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let demo = backup_core::demo::build_demo(&dir.path().join("demo"), 19)?;
    backup_core::init_keys(
        &demo.config.appliance.state_dir,
        &Passphrase::new("correct horse battery staple".into())?,
        KdfParams::MINIMUM,
    )?;
    let node = demo.config.appliance.node.clone();
    let engine = Arc::new(Engine::builder(demo.config.clone()).build()?);

    // The appliance's app, with the backup service mounted under /backup.
    let service = Service::new(engine.clone(), Arc::new(ProductUsers));
    let app = Router::new()
        .route("/", get(|| async { "appliance management UI\n" }))
        .nest("/backup", backup_http::router(service));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // The service reads each client's address from ConnectInfo (or from the
    // `backup_http::Peer` a TLS listener inserts).
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    println!("appliance UI and backup service on http://{addr}/ (service under /backup)");

    // A cron job's pull, through the product's own server.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode("operator:operator-password");
    let request = http::Request::get(format!("http://{addr}/backup/backup?node={node}"))
        .header(http::header::AUTHORIZATION, format!("Basic {basic}"))
        .body(http_body_util::Empty::new())?;
    let response = client.request(request).await?;
    anyhow::ensure!(
        response.status() == 200,
        "GET /backup/backup: {}",
        response.status()
    );
    let disposition = response.headers()[http::header::CONTENT_DISPOSITION]
        .to_str()?
        .to_string();
    let image = response
        .into_body()
        .collect()
        .await
        .context("the image stream broke")?
        .to_bytes();
    let path = dir.path().join("pulled.bkp");
    std::fs::write(&path, &image)?;
    let report = engine.verify(path.as_path()).await?;
    println!(
        "pulled {} bytes ({disposition}); verified: {}",
        image.len(),
        report.verified.join(", ")
    );

    // Every request is in the appliance's audit log, with its user.
    for r in engine
        .audit_records(None)?
        .iter()
        .filter(|r| r.operation == "http")
    {
        println!(
            "audit: {} {} {} -> {}",
            r.actor,
            r.route.as_deref().unwrap_or("-"),
            r.target,
            r.outcome
        );
    }
    Ok(())
}
