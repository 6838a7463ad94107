//! A real Chromium, driven over WebDriver (chromedriver) with fantoccini, for the portal and
//! transparency pages.
//!
//! The driver: `CUSTODIA_WEBDRIVER` (the URL of a running chromedriver), else a `chromedriver`
//! found on `PATH`, started for the test on a free port and stopped after it.
//! With neither, [`Browser::open`] prints that the test was skipped and returns `None`, unless
//! `CUSTODIA_REQUIRE_BROWSER` is set: `.ci/run` sets it after installing Debian's `chromium` and
//! `chromium-driver`, so CI fails rather than skips.
//!
//! Browser tests take [`BROWSER_LOCK`] so only one Chromium runs at a time on a 2-core machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// One browser at a time.
pub static BROWSER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where screenshots of the test run are written (`docs/screenshots/` holds the committed ones).
pub fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// A browser session, with the chromedriver it talks to when the test started one.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    /// Where the browser saves downloads.
    pub downloads: tempfile::TempDir,
    driver: Option<Child>,
    _guard: tokio::sync::MutexGuard<'static, ()>,
}

impl Browser {
    /// A headless Chromium of `width` × `height` CSS pixels, or `None` (after printing why)
    /// when no WebDriver is available.
    pub async fn open(test: &str, width: u32, height: u32) -> Option<Browser> {
        let guard = BROWSER_LOCK.lock().await;
        let (url, driver) = match std::env::var("CUSTODIA_WEBDRIVER") {
            Ok(url) if !url.is_empty() => (url, None),
            _ => match start_chromedriver() {
                Some((url, child)) => (url, Some(child)),
                None => {
                    assert!(
                        std::env::var_os("CUSTODIA_REQUIRE_BROWSER").is_none(),
                        "{test}: CUSTODIA_REQUIRE_BROWSER is set but chromedriver could not be started"
                    );
                    println!(
                        "SKIPPED {test}: no WebDriver (set CUSTODIA_WEBDRIVER or install chromium and \
                         chromium-driver; .ci/run does)"
                    );
                    return None;
                }
            },
        };
        let downloads = tempfile::tempdir().expect("download dir");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--hide-scrollbars", "--force-device-scale-factor=1", "--lang=en-US",
                    format!("--window-size={width},{height}"),
                ],
                "prefs": {
                    "download.default_directory": downloads.path(),
                    "download.prompt_for_download": false,
                },
            },
        });
        let Value::Object(caps) = caps else { unreachable!() };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut last_error = String::new();
        // A just-started chromedriver needs a moment before it accepts sessions.
        for _ in 0..50 {
            match ClientBuilder::new(connector.clone()).capabilities(caps.clone()).connect(&url).await {
                Ok(client) => return Some(Browser { client, downloads, driver, _guard: guard }),
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // chromedriver without a Chromium to drive, or a driver that never came up.
        assert!(
            std::env::var_os("CUSTODIA_REQUIRE_BROWSER").is_none(),
            "{test}: no browser session at {url}: {last_error}"
        );
        println!("SKIPPED {test}: no browser session at {url}: {last_error}");
        if let Some(mut d) = driver {
            let _ = d.kill();
            let _ = d.wait();
        }
        None
    }

    /// Waits (up to 10 s) for an element matching `css` and returns its text.
    pub async fn text(&self, css: &str) -> String {
        let el = self.wait(css).await;
        el.text().await.expect("element text")
    }

    /// Waits (up to 10 s) for an element matching `css` to be present.
    pub async fn wait(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    /// Waits (up to 10 s) until `script` (a JS expression) is truthy.
    pub async fn wait_until(&self, script: &str) {
        for _ in 0..100 {
            let v = self.client.execute(&format!("return !!({script});"), vec![]).await.expect("script runs");
            if v == Value::Bool(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for: {script}");
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        self.wait(css).await.click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Every URL the page loaded (navigation and resources), from the browser's own
    /// Resource Timing entries.
    pub async fn loaded_urls(&self) -> Vec<String> {
        let v = self
            .client
            .execute(
                "return performance.getEntries().filter(e => e.entryType === 'navigation' || \
                 e.entryType === 'resource').map(e => e.name);",
                vec![],
            )
            .await
            .expect("performance entries");
        v.as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_owned()).collect()
    }

    /// Saves a PNG screenshot as `<screenshot_dir>/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(screenshot_dir().join(format!("{name}.png")), png).expect("screenshot written");
    }

    /// Ends the session and stops a chromedriver this test started.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        if let Some(mut d) = self.driver.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(d) = self.driver.as_mut() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

/// Starts `chromedriver` on a free port, if it is installed. The port is free when picked but
/// may be bound by another test before chromedriver binds it (it then exits): the driver is
/// taken only once it says it started, else started again on another port.
fn start_chromedriver() -> Option<(String, Child)> {
    use std::io::BufRead;
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let mut child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let stdout = child.stdout.take()?;
        let (started, said) = std::sync::mpsc::channel();
        // Reads until chromedriver says it started (or its output ends), then drains the rest.
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            let ok = lines.by_ref().map_while(Result::ok).any(|line| line.contains("started successfully"));
            let _ = started.send(ok);
            lines.for_each(drop);
        });
        if said.recv_timeout(Duration::from_secs(10)) == Ok(true) {
            return Some((format!("http://127.0.0.1:{port}"), child));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}
