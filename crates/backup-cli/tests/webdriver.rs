//! A real browser for the tests: Debian's `chromium`, headless, driven
//! through `chromedriver` (WebDriver) with `fantoccini`, in a fresh profile
//! that accepts the service's self-signed certificate and saves downloads
//! into a directory of its own ([`Browser`]).
//!
//! The one test here proves the harness on a page that is not the service's:
//! a Basic-authenticated Python server, logged into through credentials in
//! the URL, a checkbox ticked, a button clicked, the download saved.
#![allow(dead_code, unreachable_pub)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::http_util::{free_port, require_program};

/// Debian's browser and its WebDriver.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Headless chromium under chromedriver; both (and every process of the
/// browser's profile) are ended when it is dropped.
pub struct Browser {
    pub client: Client,
    /// Where the browser saves downloads.
    pub downloads: PathBuf,
    driver: DriverGuard,
    driver_log: PathBuf,
    _tmp: TempDir,
}

/// Panics, naming the Debian packages, unless chromium and chromedriver run.
pub fn require_browser() {
    for (program, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        assert!(
            Path::new(program).exists(),
            "this test drives a real browser, and {program} is missing \
             (install the Debian packages: apt-get install chromium chromium-driver)"
        );
        require_program(program, package);
    }
}

impl Browser {
    /// Starts chromedriver on a free port of 127.0.0.1 and a headless
    /// chromium session through it; panics loudly (with chromedriver's log)
    /// if either cannot start.
    pub async fn start() -> Browser {
        require_browser();
        let tmp = tempfile::Builder::new()
            .prefix("backup-browser-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().canonicalize().expect("canonical tempdir");
        let downloads = dir.join("downloads");
        let profile = dir.join("profile");
        fs::create_dir_all(&downloads).unwrap();
        fs::create_dir_all(&profile).unwrap();
        let port = free_port();
        let driver_log = dir.join("chromedriver.log");
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", driver_log.display()))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&driver_log).unwrap())
            .stderr(Stdio::from(
                fs::File::create(dir.join("chromedriver.err")).unwrap(),
            ))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let driver = DriverGuard {
            driver: Some(driver),
            profile: profile.clone(),
        };
        wait_port(port, &driver_log);

        let caps = json!({
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
                "prefs": {
                    "download.default_directory": downloads.display().to_string(),
                    "download.prompt_for_download": false,
                    "download.directory_upgrade": true,
                    "safebrowsing.enabled": false,
                },
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start a headless chromium session: {e}\n\
                     --- chromedriver log ---\n{}",
                    fs::read_to_string(&driver_log).unwrap_or_default()
                )
            });
        Browser {
            client,
            downloads,
            driver,
            driver_log,
            _tmp: tmp,
        }
    }

    /// Opens `url` (which may carry `user:password@` for Basic authentication).
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| {
            panic!(
                "the browser could not open the page: {e}\n--- chromedriver log ---\n{}",
                self.driver_log_text()
            )
        });
    }

    /// Clicks the element with this id.
    pub async fn click(&self, id: &str) {
        let el = match self.client.find(Locator::Id(id)).await {
            Ok(el) => el,
            Err(e) => panic!(
                "no element #{id} on the page: {e}\n--- page ---\n{}",
                self.source_now().await
            ),
        };
        el.click()
            .await
            .unwrap_or_else(|e| panic!("clicking #{id}: {e}"));
    }

    /// Clicks the first element `selector` (CSS) finds.
    pub async fn click_css(&self, selector: &str) {
        let el = match self.client.find(Locator::Css(selector)).await {
            Ok(el) => el,
            Err(e) => panic!(
                "nothing matches {selector:?} on the page: {e}\n--- page ---\n{}",
                self.source_now().await
            ),
        };
        el.click()
            .await
            .unwrap_or_else(|e| panic!("clicking {selector:?}: {e}"));
    }

    /// The text of the element with this id.
    pub async fn text_of(&self, id: &str) -> String {
        let el = self
            .client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("no element #{id} on the page: {e}"));
        el.text()
            .await
            .unwrap_or_else(|e| panic!("reading the text of #{id}: {e}"))
    }

    /// Whether the checkbox with this id is ticked.
    pub async fn is_checked(&self, id: &str) -> bool {
        let el = self
            .client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("no element #{id} on the page: {e}"));
        el.is_selected()
            .await
            .unwrap_or_else(|e| panic!("reading whether #{id} is ticked: {e}"))
    }

    /// What chromedriver logged (the end of it).
    pub fn driver_log_text(&self) -> String {
        let mut log = fs::read_to_string(&self.driver_log).unwrap_or_default();
        let err = self.driver_log.with_file_name("chromedriver.err");
        log.push_str("\n--- chromedriver's and chromium's standard error ---\n");
        log.push_str(&fs::read_to_string(err).unwrap_or_default());
        let mut start = log.len().saturating_sub(20_000);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        log[start..].to_owned()
    }

    /// The page's current HTML.
    pub async fn source_now(&self) -> String {
        self.client.source().await.unwrap_or_default()
    }

    /// A PNG of the visible page.
    pub async fn screenshot(&self) -> Vec<u8> {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("taking a screenshot: {e}"));
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "the screenshot is no PNG"
        );
        png
    }

    /// Waits (at most `limit`) for the first finished download, ignoring
    /// Chromium's `.crdownload` files of downloads still running.
    pub fn wait_download(&self, limit: Duration) -> PathBuf {
        let deadline = Instant::now() + limit;
        loop {
            let names: Vec<PathBuf> = fs::read_dir(&self.downloads)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            let running = names
                .iter()
                .any(|p| p.extension().is_some_and(|x| x == "crdownload"));
            let done: Vec<&PathBuf> = names
                .iter()
                .filter(|p| {
                    p.extension().is_none_or(|x| x != "crdownload")
                        && !p.file_name().unwrap().to_string_lossy().starts_with('.')
                })
                .collect();
            if !running && !done.is_empty() {
                assert_eq!(done.len(), 1, "more than one download: {done:?}");
                return done[0].clone();
            }
            assert!(
                Instant::now() < deadline,
                "no finished download in {} after {limit:?} (files: {names:?})\n\
                 --- chromedriver log ---\n{}",
                self.downloads.display(),
                fs::read_to_string(&self.driver_log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ends the session (the browser quits), then chromedriver.
    pub async fn quit(mut self) {
        let _ = self.client.clone().close().await;
        self.driver.stop();
    }
}

/// chromedriver and the browser it starts: when dropped, ends chromedriver
/// (by its handle) and the browser's processes, found by the fresh profile
/// directory on their command lines.
struct DriverGuard {
    driver: Option<Child>,
    profile: PathBuf,
}

impl DriverGuard {
    fn stop(&mut self) {
        if let Some(mut d) = self.driver.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        let marker = format!("--user-data-dir={}", self.profile.display());
        let Ok(procs) = fs::read_dir("/proc") else {
            return;
        };
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let cmdline = fs::read(p.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline)
                .split('\0')
                .any(|a| a == marker)
            {
                let _ = Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

impl Drop for DriverGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until something listens on 127.0.0.1:`port`.
fn wait_port(port: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen on 127.0.0.1:{port} within 30 s\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Python HTTP server asking for Basic credentials `alice:pw` and serving
/// a form like the service's page; killed when dropped.
struct BasicPage {
    child: Child,
    port: u16,
}

impl Drop for BasicPage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const BASIC_PAGE: &str = r#"
import base64, http.server, sys
WANT = 'Basic ' + base64.b64encode(b'alice:pw').decode()
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def reply(self, code, ctype, body, extra=()):
        self.send_response(code)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.headers.get('Authorization') != WANT:
            return self.reply(401, 'text/plain', b'', [('WWW-Authenticate', 'Basic realm="backup", charset="UTF-8"')])
        if self.path.startswith('/backup?'):
            return self.reply(200, 'application/octet-stream', self.path.encode(),
                              [('Content-Disposition', 'attachment; filename="image.bkp"')])
        page = (b'<!doctype html><form action="/backup" method="get">'
                b'<input type="hidden" name="node" value="n1">'
                b'<label><input type="checkbox" id="include-audits-n1" name="audits" value="true"> Include audits</label>'
                b'<button id="backup-n1" type="submit">Back up</button></form>')
        self.reply(200, 'text/html', page)
s = http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H)
print('ready', flush=True)
s.serve_forever()
"#;

fn basic_page() -> BasicPage {
    require_program("python3", "python3");
    let port = free_port();
    let mut child = Command::new("python3")
        .args(["-c", BASIC_PAGE, &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready", "the Python page server did not start");
    BasicPage { child, port }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_harness_logs_in_ticks_clicks_and_downloads() {
    let page = basic_page();
    let browser = Browser::start().await;
    browser
        .goto(&format!("http://alice:pw@127.0.0.1:{}/", page.port))
        .await;
    assert!(!browser.is_checked("include-audits-n1").await);
    browser.click("include-audits-n1").await;
    assert!(browser.is_checked("include-audits-n1").await);
    browser.click("backup-n1").await;
    let file = browser.wait_download(Duration::from_secs(60));
    assert_eq!(file.file_name().unwrap(), "image.bkp");
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        "/backup?node=n1&audits=true",
        "the download is the form's request, with the credentials the URL carried"
    );
    browser.quit().await;
}
