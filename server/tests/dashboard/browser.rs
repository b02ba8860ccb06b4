//! A headless Chromium driven over WebDriver: Debian's `chromium` and `chromium-driver`.
//!
//! The W3C WebDriver protocol is JSON over HTTP, and these tests need a dozen of its commands,
//! so they are spoken here with `ureq`, blocking like the rest of the tests, rather than
//! through a second HTTP stack on an async runtime. Each [`Browser`] starts its own
//! `chromedriver` on a free port; only one runs at a time, so timings stay those of one page on
//! a small machine.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Set to `1` to let the suite pass without running when Chromium or its driver is missing.
const SKIP_VAR: &str = "LOCKER_SKIP_BROWSER_TESTS";

/// How long a page may take to show what a test waits for. The dashboard promises a second;
/// the rest is slack for a loaded machine starting a browser.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The W3C name of an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Browsers run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Window sizes the tests look at the page in.
pub const LAPTOP: (u32, u32) = (1280, 800);
pub const PHONE: (u32, u32) = (390, 844);

/// A Chromium window with one WebDriver session.
pub struct Browser {
    driver: Child,
    session: String,
    agent: ureq::Agent,
    /// Where this test's screenshots go.
    shots: PathBuf,
    test: String,
    _turn: MutexGuard<'static, ()>,
}

impl Browser {
    /// A headless Chromium window of `size` for the test `test`, or `None` (having said why)
    /// when Chromium or chromedriver is missing and `LOCKER_SKIP_BROWSER_TESTS=1` allows it.
    pub fn start(test: &str, size: (u32, u32)) -> Option<Browser> {
        let (chromium, chromedriver) = match (
            find(
                "LOCKER_CHROMIUM",
                &["chromium", "chromium-browser", "google-chrome"],
            ),
            find("LOCKER_CHROMEDRIVER", &["chromedriver"]),
        ) {
            (Some(chromium), Some(chromedriver)) => (chromium, chromedriver),
            (chromium, _) => {
                let missing = if chromium.is_none() {
                    "chromium"
                } else {
                    "chromedriver"
                };
                if std::env::var(SKIP_VAR).is_ok_and(|v| v == "1") {
                    // Past the test harness's capture, so that a skip is seen in every run.
                    use std::io::Write;
                    let _ = writeln!(
                        std::io::stderr(),
                        "SKIPPED {test}: {missing} was not found ({SKIP_VAR}=1)"
                    );
                    return None;
                }
                panic!(
                    "{test}: {missing} was not found; install Debian's chromium and \
                     chromium-driver (apt-get install chromium chromium-driver), name the \
                     binaries in LOCKER_CHROMIUM and LOCKER_CHROMEDRIVER, or set {SKIP_VAR}=1 \
                     to skip the browser tests"
                );
            }
        };
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let port = locker_testkit::process::free_port().expect("a free port");
        // In a process group of its own, with the Chromium it starts, so that the drop below
        // stops them all (Chromium's helpers outlived the driver and the session's end).
        let driver = Command::new(&chromedriver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", chromedriver.display()));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !agent
            .get(format!("{base}/status"))
            .call()
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let shots = target_dir().join("dashboard-screenshots");
        std::fs::create_dir_all(&shots).expect("create the screenshot directory");
        let mut browser = Browser {
            driver,
            session: String::new(),
            agent,
            shots,
            test: test.to_owned(),
            _turn: turn,
        };
        let (width, height) = size;
        let mut options = json!({
            "binary": chromium,
            "args": [
                "--headless=new",
                // Root in a container has no user namespace for Chromium's sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--lang=en-US",
                format!("--window-size={width},{height}"),
            ],
        });
        if width < 500 {
            // A window is at least 500 px wide; a phone's viewport is emulated instead.
            options["mobileEmulation"] = json!({"deviceMetrics": {
                "width": width, "height": height, "pixelRatio": 1, "touch": true, "mobile": true,
            }});
        }
        let created = browser.command(
            "POST",
            &format!("{base}/session"),
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": options,
            }}}),
        );
        browser.session = format!(
            "{base}/session/{}",
            created["sessionId"].as_str().expect("a session id")
        );
        Some(browser)
    }

    /// Sends a WebDriver command to `url`; panics, naming it, if the driver answers an error.
    fn command(&self, method: &str, url: &str, body: Value) -> Value {
        self.try_command(method, url, body)
            .unwrap_or_else(|e| panic!("{}: WebDriver {method} {url}: {e}", self.test))
    }

    fn try_command(&self, method: &str, url: &str, body: Value) -> Result<Value, String> {
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json")
            .body(if method == "GET" {
                String::new()
            } else {
                body.to_string()
            })
            .expect("a request");
        let mut resp = self.agent.run(request).map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| e.to_string())?;
        let answer: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        if status != 200 {
            return Err(format!(
                "{status} {}: {}",
                answer["value"]["error"], answer["value"]["message"]
            ));
        }
        Ok(answer["value"].clone())
    }

    fn session(&self, method: &str, path: &str, body: Value) -> Value {
        self.command(method, &format!("{}{path}", self.session), body)
    }

    /// Opens `url` as a person types it into the address bar.
    pub fn goto(&self, url: &str) {
        self.session("POST", "/url", json!({ "url": url }));
    }

    /// The first element `css` selects, if any.
    fn find(&self, css: &str) -> Option<String> {
        let url = format!("{}/element", self.session);
        match self.try_command("POST", &url, json!({"using": "css selector", "value": css})) {
            Ok(found) => Some(
                found[ELEMENT]
                    .as_str()
                    .unwrap_or_else(|| panic!("{}: not an element: {found}", self.test))
                    .to_owned(),
            ),
            Err(e) if e.contains("no such element") => None,
            Err(e) => panic!("{}: finding {css}: {e}", self.test),
        }
    }

    /// Sends `method` to `/element/{id}/{command}` for the element `css` selects (`None`
    /// when nothing matches). The page redraws what changed, so an element found may be
    /// replaced before the command reaches it: then it is found again.
    fn on_element(&self, css: &str, method: &str, command: &str, body: Value) -> Option<Value> {
        for _ in 0..20 {
            let id = self.find(css)?;
            let url = format!("{}/element/{id}/{command}", self.session);
            match self.try_command(method, &url, body.clone()) {
                Ok(answer) => return Some(answer),
                Err(e) if e.contains("stale element reference") => continue,
                Err(e) => panic!("{}: {method} {command} on {css}: {e}", self.test),
            }
        }
        panic!("{}: {css} was replaced 20 times in a row", self.test)
    }

    /// Like [`Browser::on_element`], for an element that must be there.
    fn on_present(&self, css: &str, method: &str, command: &str, body: Value) -> Value {
        self.on_element(css, method, command, body)
            .unwrap_or_else(|| {
                let page = self.page_text();
                panic!(
                    "{}: nothing on the page matches {css}; it reads:\n{page}",
                    self.test
                )
            })
    }

    /// The text of the element `css` selects, as rendered (hidden text is empty).
    pub fn text(&self, css: &str) -> String {
        self.on_present(css, "GET", "text", Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Whether `css` selects an element that is shown.
    pub fn is_shown(&self, css: &str) -> bool {
        self.on_element(css, "GET", "displayed", Value::Null) == Some(Value::Bool(true))
    }

    /// An attribute of the element `css` selects.
    pub fn attribute(&self, css: &str, name: &str) -> Option<String> {
        self.on_present(css, "GET", &format!("attribute/{name}"), Value::Null)
            .as_str()
            .map(str::to_owned)
    }

    /// Clicks the element `css` selects, as a person does with the mouse.
    pub fn click(&self, css: &str) {
        self.on_present(css, "POST", "click", json!({}));
    }

    /// Types `text` into the element `css` selects, after what it holds.
    pub fn type_into(&self, css: &str, text: &str) {
        self.on_present(css, "POST", "value", json!({ "text": text }));
    }

    /// Empties the input `css` selects.
    pub fn clear(&self, css: &str) {
        self.on_present(css, "POST", "clear", json!({}));
    }

    /// Presses and releases each of `keys` on the keyboard, wherever the focus is (WebDriver's
    /// codes for special keys: [`TAB`], [`ENTER`]).
    pub fn press(&self, keys: &str) {
        let actions: Vec<Value> = keys
            .chars()
            .flat_map(|key| {
                [
                    json!({"type": "keyDown", "value": key.to_string()}),
                    json!({"type": "keyUp", "value": key.to_string()}),
                ]
            })
            .collect();
        self.session(
            "POST",
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        );
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; its result.
    pub fn run(&self, script: &str, args: Value) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
    }

    /// What the page reads, for failure messages.
    pub fn page_text(&self) -> String {
        self.run("return document.body.innerText;", json!([]))
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until `check` returns something, at most [`PATIENCE`]; panics saying `what` was
    /// expected and what the page reads (and leaves a screenshot) if it never does.
    pub fn wait_for<T>(&self, what: &str, mut check: impl FnMut(&Browser) -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(found) = check(self) {
                return found;
            }
            if Instant::now() > deadline {
                let shot = self.screenshot("failure");
                panic!(
                    "{}: expected {what} within {PATIENCE:?}; the page ({}) reads:\n{}",
                    self.test,
                    shot.display(),
                    self.page_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the element `css` selects is shown and its text contains `text`.
    pub fn wait_for_text(&self, css: &str, text: &str) -> String {
        self.wait_for(&format!("{css} to show {text:?}"), |b| {
            b.is_shown(css)
                .then(|| b.text(css))
                .filter(|shown| shown.contains(text))
        })
    }

    /// Saves what the window shows as `target/dashboard-screenshots/TEST-NAME.png`; returns
    /// the path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let png = self.session("GET", "/screenshot", Value::Null);
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("a base64 PNG"))
            .expect("base64");
        let path = self.shots.join(format!("{}-{name}.png", self.test));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.try_command("DELETE", &self.session.clone(), Value::Null);
        }
        if let Ok(group) = libc::pid_t::try_from(self.driver.id()) {
            // SAFETY: kill(2) with a negative pid signals that process group; no memory is
            // involved.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// WebDriver's key codes.
pub const TAB: &str = "\u{E004}";
pub const ENTER: &str = "\u{E007}";

/// The binary that `var` names, or the first of `names` on the `PATH`, if it is there.
fn find(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Some(PathBuf::from(path)).filter(|path| is_executable(path));
    }
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The target directory this test was built in (`target/`, or `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .expect("a test binary lives in target/<profile>/deps")
        .to_path_buf()
}
