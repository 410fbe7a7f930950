//! The service's page in a real browser: headless chromium logs in as an
//! administrator, ticks *Include audits*, clicks *Back up*, and the image it
//! downloads verifies and restores with its audit records.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::task::block_in_place;

use crate::http_util::*;
use crate::util::run;
use crate::webdriver::Browser;

/// URL-safe, so that it can ride in the page's address as `user:password@`.
const ADMIN_PW: &str = "browser-admin-pw-2026";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_backs_up_with_audits_in_a_headless_browser() {
    let (app, mut server) = block_in_place(|| {
        let app = Appliance::new("");
        app.add_user("admin", "admin", ADMIN_PW);
        let server = app.serve();
        (app, server)
    });
    let browser = Browser::start().await;
    browser
        .goto(&format!(
            "https://admin:{ADMIN_PW}@127.0.0.1:{}/",
            server.port
        ))
        .await;
    let page = browser.source_now().await;
    assert!(page.contains(NODE), "the page names the node:\n{page}");

    let checkbox = format!("include-audits-{NODE}");
    assert!(
        !browser.is_checked(&checkbox).await,
        "audits are off by default"
    );
    browser.click(&checkbox).await;
    assert!(browser.is_checked(&checkbox).await);
    browser.click(&format!("backup-{NODE}")).await;

    let file = block_in_place(|| browser.wait_download(Duration::from_secs(120)));
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(HTTP_PREFIX) && name.ends_with(".bkp"),
        "the browser saved {name}"
    );
    block_in_place(|| {
        let components = app.verify_components(&file);
        assert!(
            components.contains(&"audits".to_owned()),
            "Include audits was ticked: {components:?}"
        );
        assert!(
            app.restore_and_check(&file, "restored"),
            "the audit records were restored"
        );
        // The browser's command lines carry no password.
        let ps = run(Command::new("ps").args(["-eo", "args"]));
        app.assert_no_secret_in("`ps -eo args`", &ps.stdout);
    });

    // The page again (the browser keeps the credentials for the site): the
    // image is listed now. Its screenshot is the README's picture.
    browser
        .goto(&format!("https://127.0.0.1:{}/", server.port))
        .await;
    let page = browser.source_now().await;
    assert!(page.contains(&name), "the image list shows {name}:\n{page}");
    // Copy link: the page asks the service for a 6-hour link and shows it;
    // the link works without credentials.
    browser.click_css("button[data-link]").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let text = browser.text_of("link-out").await;
        if text.starts_with("https://") {
            break text;
        }
        assert!(Instant::now() < deadline, "no link on the page: {text:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let link = shown.split_whitespace().next().unwrap().to_owned();
    assert!(link.contains(&name), "{shown}");
    block_in_place(|| {
        let anonymous = Curl::anonymous(&server, &app.dir().join("anon"));
        let got = anonymous.get(&[&link]);
        got.expect_status(200);
        assert_eq!(got.body, fs::read(app.store.join(&name)).unwrap());
    });
    let png = browser.screenshot().await;
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("http-page.png");
    fs::write(&shot, &png).unwrap();
    eprintln!("screenshot of the page: {}", shot.display());
    browser.quit().await;

    block_in_place(|| {
        let audit = app.http_audit();
        let backups: Vec<_> = audit
            .iter()
            .filter(|r| {
                r["actor"] == "http:admin@127.0.0.1"
                    && r["route"] == "GET /backup"
                    && r["outcome"] == BACKUP_DONE
            })
            .collect();
        assert_eq!(backups.len(), 1, "{}", show(&audit));
        assert!(
            backups[0]["user_agent"]
                .as_str()
                .is_some_and(|a| a.contains("Chrome")),
            "{}",
            backups[0]
        );
        server.assert_serving();
        app.assert_no_secret_leaked(&server);
    });
}
