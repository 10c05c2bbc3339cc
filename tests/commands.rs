//! The `herald` binary's operator commands: `config check` (validation, effective settings with
//! secrets redacted) and `probe` (the container health check).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::spawn_app;

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

/// A scratch directory (no `config.toml` in it unless a test writes one).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("herald-commands-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `herald ARGS` in `dir` with exactly the `HERALD__*` variables given.
fn herald(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(HERALD);
    command.args(args).current_dir(dir);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HERALD__") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    let output = command.output().expect("herald runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "herald {args:?} panicked: {stderr}");
    output
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const SECRETS: [&str; 4] = ["file-jwt-secret", "env-key-one", "env-key-two", "hunter2"];

#[test]
fn config_check_prints_the_effective_settings_with_secrets_redacted() {
    let scratch = Scratch::new("valid");
    let file = scratch.write(
        "herald.toml",
        "[server]\nport = 6001\ncors_origins = [\"https://app.example.com\"]\n[auth]\njwt_secret = \"file-jwt-secret\"\n[api]\nkeys = [\"file-key\"]\n",
    );
    let env = [
        ("HERALD__API__KEYS", "env-key-one,env-key-two"),
        ("HERALD__REDIS__URL", "redis://herald:hunter2@redis.internal:6379/0"),
        ("HERALD__SERVER__SHUTDOWN_GRACE_SECS", "25"),
    ];
    let out = herald(&scratch.0, &["config", "check", "--config", file.to_str().unwrap()], &env);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    for secret in SECRETS.iter().chain(&["file-key"]) {
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "{secret} leaked:\n{stdout}\n{stderr}");
    }
    assert!(stdout.starts_with("# herald config check: valid\n"), "{stdout}");
    assert!(stdout.contains("HERALD__API__KEYS, HERALD__REDIS__URL, HERALD__SERVER__SHUTDOWN_GRACE_SECS"), "{stdout}");
    for line in [
        "port = 6001",                             // from the file
        "shutdown_grace_secs = 25",                // from the environment
        "keys = [\"<redacted>\", \"<redacted>\"]", // the environment wins, redacted
        "jwt_secret = \"<redacted>\"",
        "url = \"redis://herald:<redacted>@redis.internal:6379/0\"",
        "cors_origins = [\"https://app.example.com\"]",
        "max_replay = 100", // a built-in default
    ] {
        assert!(stdout.lines().any(|l| l == line), "missing {line:?} in\n{stdout}");
    }
    // The output is itself a settings file, and a valid one.
    let printed = scratch.write("printed.toml", &stdout);
    let again = herald(&scratch.0, &["config", "check", "--config", printed.to_str().unwrap()], &[]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(text(&again.stdout).contains("port = 6001"));
}

#[test]
fn config_check_without_a_file_uses_the_defaults_and_the_environment() {
    let scratch = Scratch::new("defaults");
    let out = herald(&scratch.0, &["config", "check"], &[("HERALD__AUTH__JWT_SECRET", "file-jwt-secret")]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("(not found: built-in defaults)"), "{stdout}");
    assert!(stdout.lines().any(|l| l == "port = 5000"));
    assert!(!stdout.contains("file-jwt-secret"));
    // Valid, but the API is disabled: said on stderr.
    assert!(text(&out.stderr).contains("warning: api.keys is empty"), "{}", text(&out.stderr));
}

/// What is wrong, the file (if any), the environment, and what the error must say.
type Case<'a> = (&'a str, Option<&'a str>, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn config_check_refuses_invalid_settings_with_the_reason() {
    let scratch = Scratch::new("invalid");
    let ok_auth = ("HERALD__AUTH__JWT_SECRET", "file-jwt-secret");
    let cases: Vec<Case> = vec![
        ("unknown key in the file", Some("[server]\nprot = 1\n"), vec![ok_auth], "unknown field `prot`"),
        ("unknown section", Some("[servr]\nport = 1\n"), vec![ok_auth], "unknown field `servr`"),
        ("not TOML", Some("[server\nport = 1\n"), vec![ok_auth], "invalid configuration"),
        ("wrong type", Some("[server]\nport = \"five\"\n"), vec![ok_auth], "server.port"),
        ("port out of range", Some("[server]\nport = 70000\n"), vec![ok_auth], "server.port"),
        ("wrong type from the environment", None, vec![ok_auth, ("HERALD__SERVER__PORT", "abc")], "server.port"),
        ("unknown key from the environment", None, vec![ok_auth, ("HERALD__SERVER__PROT", "1")], "unknown field `prot`"),
        ("no key for required auth", None, vec![], "auth.required is true but neither auth.jwt_secret"),
        ("origin with a path", None, vec![ok_auth, ("HERALD__SERVER__CORS_ORIGINS", "https://a.example/")], "server.cors_origins"),
        ("bad proxy", None, vec![ok_auth, ("HERALD__SERVER__TRUSTED_PROXIES", "10.0.0.300")], "server.trusted_proxies"),
        ("unknown algorithm", None, vec![ok_auth, ("HERALD__AUTH__ALGORITHMS", "HS999")], "auth.algorithms"),
        ("missing public key", None, vec![("HERALD__AUTH__PUBLIC_KEY_PEM", "/nonexistent/key.pem")], "auth.public_key_pem"),
        ("bad redis url", None, vec![ok_auth, ("HERALD__REDIS__URL", "http://user:hunter2@x")], "redis.url"),
        ("namespace without a slash", None, vec![ok_auth, ("HERALD__SOCKETIO__NAMESPACES", "chat")], "socketio.namespaces"),
    ];
    for (what, file, env, expected) in cases {
        let mut args = vec!["config", "check"];
        let path;
        if let Some(file) = file {
            path = scratch.write("bad.toml", file);
            args.extend(["--config", path.to_str().unwrap()]);
        }
        let out = herald(&scratch.0, &args, &env);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains("herald config check: invalid configuration:"), "{what}: {stderr}");
        assert!(stderr.contains(expected), "{what}: expected {expected:?} in {stderr}");
        assert!(!stderr.contains("hunter2"), "{what}: a password leaked: {stderr}");
        assert!(out.stdout.is_empty(), "{what}: nothing printed for invalid settings");
    }
    let out = herald(&scratch.0, &["config", "check", "--config", "/nonexistent/herald.toml"], &[ok_auth]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not found"), "{}", text(&out.stderr));
}

#[tokio::test]
async fn probe_succeeds_on_2xx_only() {
    let app = spawn_app().await;
    let scratch = Scratch::new("probe");
    let dir = scratch.0.clone();
    let health = app.url("/health");
    let missing = app.url("/nope");
    let port = app.addr.port().to_string();
    let (ok, not_found, default_url, closed, not_http) = tokio::task::spawn_blocking(move || {
        (
            herald(&dir, &["probe", "--url", &health], &[]),
            herald(&dir, &["probe", "--url", &missing], &[]),
            // No --url: http://127.0.0.1:<server.port>/health, the port from the environment.
            herald(&dir, &["probe"], &[("HERALD__SERVER__PORT", &port)]),
            herald(&dir, &["probe", "--url", "http://127.0.0.1:1/health", "--timeout", "2"], &[]),
            herald(&dir, &["probe", "--url", "https://127.0.0.1/health"], &[]),
        )
    })
    .await
    .unwrap();
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains(": 200"), "{}", text(&ok.stdout));
    assert_eq!(not_found.status.code(), Some(1));
    assert!(text(&not_found.stderr).contains("HTTP 404"), "{}", text(&not_found.stderr));
    assert!(default_url.status.success(), "{}", text(&default_url.stderr));
    assert!(text(&default_url.stdout).contains(&format!("http://127.0.0.1:{}/health", app.addr.port())));
    assert_eq!(closed.status.code(), Some(1));
    assert!(text(&closed.stderr).contains("cannot connect"), "{}", text(&closed.stderr));
    assert_eq!(not_http.status.code(), Some(1));
    assert!(text(&not_http.stderr).contains("only http://"), "{}", text(&not_http.stderr));
}

#[tokio::test]
async fn probe_gives_up_on_a_server_that_never_answers() {
    // Accepts the connection, never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    let scratch = Scratch::new("probe-silent");
    let dir = scratch.0.clone();
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || herald(&dir, &["probe", "--url", &url, "--timeout", "1"], &[])).await.unwrap();
    drop(listener);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no answer within 1 s"), "{}", text(&out.stderr));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
