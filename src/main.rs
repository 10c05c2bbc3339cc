//! The `herald` command: serve (default), mint a development token, check a settings file,
//! or probe a running instance (a container's health check).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use herald::auth::mint_dev_token;
use herald::configuration::Settings;
use herald::startup::Application;
use herald::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(name = "herald", version, about = "Real-time notification server (Socket.IO)")]
struct Cli {
    /// Settings file (default ./config.toml, optional when not given explicitly).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log output format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default when no command is given).
    Serve,
    /// Print a development token signed with auth.jwt_secret.
    Token {
        /// The user id (claim `user_id`).
        #[arg(long)]
        user: String,
        #[arg(long)]
        role: Option<String>,
        /// A project the token grants (repeatable).
        #[arg(long = "project")]
        projects: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 24 * 3600)]
        ttl: u64,
    },
    /// Settings: `herald config check` validates them.
    Config {
        #[command(subcommand)]
        action: ConfigCommand,
    },
    /// GET a URL of a running Herald; exit 0 on a 2xx answer, 1 otherwise (a container
    /// HEALTHCHECK that needs no curl).
    Probe {
        /// What to fetch (http:// only). Default: http://127.0.0.1:<server.port>/health, the
        /// port read from the settings (file and HERALD__* environment) as `serve` reads it.
        #[arg(long)]
        url: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load the settings exactly as `serve` would (built-in defaults, the file, then HERALD__*
    /// variables), validate them, and print the effective settings as TOML with every secret
    /// redacted. Exit 0 when valid, 1 (with the reason) when not.
    Check,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let explicit = cli.config.is_some();
    let path = cli.config.unwrap_or_else(|| PathBuf::from("config.toml"));
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Config { action: ConfigCommand::Check } = command {
        return Ok(config_check(&path, explicit));
    }
    let settings = Settings::load(&path, explicit).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;

    match command {
        Command::Token { user, role, projects, ttl } => {
            if settings.auth.jwt_secret.is_empty() {
                anyhow::bail!("auth.jwt_secret is not set: set it in {} or HERALD__AUTH__JWT_SECRET", path.display());
            }
            println!("{}", mint_dev_token(&settings.auth.jwt_secret, &user, role.as_deref(), &projects, ttl)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Probe { url, timeout } => {
            let url = url.unwrap_or_else(|| format!("http://{}/health", probe_address(&settings)));
            if !(timeout.is_finite() && timeout > 0.0) {
                anyhow::bail!("--timeout must be a positive number of seconds");
            }
            match tokio::time::timeout(Duration::from_secs_f64(timeout), probe(&url)).await {
                Ok(Ok(status)) if (200..300).contains(&status) => {
                    println!("{url}: {status}");
                    Ok(ExitCode::SUCCESS)
                }
                Ok(Ok(status)) => {
                    eprintln!("herald probe: {url}: HTTP {status}");
                    Ok(ExitCode::FAILURE)
                }
                Ok(Err(e)) => {
                    eprintln!("herald probe: {url}: {e}");
                    Ok(ExitCode::FAILURE)
                }
                Err(_) => {
                    eprintln!("herald probe: {url}: no answer within {timeout} s");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Config { .. } => unreachable!("handled before the settings are loaded"),
        Command::Serve => {
            telemetry::init(cli.log_format);
            warn_about_development_secrets(&settings);
            let app = Application::build(settings).await?;
            app.run_until_stopped(shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `herald config check`: everything `serve` checks before it binds or connects.
fn config_check(path: &Path, explicit: bool) -> ExitCode {
    let settings = match Settings::load(path, explicit) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("herald config check: invalid configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(problem) = check_settings(&settings) {
        eprintln!("herald config check: invalid configuration: {problem}");
        return ExitCode::FAILURE;
    }
    let file = if path.exists() { format!("{}", path.display()) } else { format!("{} (not found: built-in defaults)", path.display()) };
    let mut overrides: Vec<String> =
        std::env::vars_os().filter_map(|(name, _)| name.into_string().ok()).filter(|name| name.starts_with("HERALD__")).collect();
    overrides.sort();
    println!("# herald config check: valid");
    println!("# file: {file}");
    println!("# environment overrides: {}", if overrides.is_empty() { "none".to_string() } else { overrides.join(", ") });
    println!("# effective settings (secrets redacted):");
    println!();
    print!("{}", settings.redacted_toml());
    for warning in warnings(&settings) {
        eprintln!("herald config check: warning: {warning}");
    }
    ExitCode::SUCCESS
}

/// What `Application::build` would refuse, short of binding the port or reaching Redis.
fn check_settings(settings: &Settings) -> Result<(), String> {
    settings.validate()?;
    herald::auth::Verifier::new(&settings.auth).map_err(|e| e.to_string())?;
    if !settings.redis.url.is_empty() {
        // Parsing only (no connection); the error never repeats the URL, which may hold a password.
        herald::cluster::endpoint::Endpoint::from_settings(&settings.redis)?;
    }
    if settings.server.host.parse::<std::net::IpAddr>().is_err()
        && std::net::ToSocketAddrs::to_socket_addrs(&(settings.server.host.as_str(), settings.server.port)).is_err()
    {
        return Err(format!("server.host: {:?} is neither an IP address nor a name that resolves", settings.server.host));
    }
    Ok(())
}

/// Valid, but probably not meant for production.
fn warnings(settings: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    if settings.auth.jwt_secret.starts_with("dev-") || settings.api.keys.iter().any(|k| k.starts_with("dev-")) {
        out.push(
            "the development jwt_secret / api key of the shipped config.toml is in use: set HERALD__AUTH__JWT_SECRET and HERALD__API__KEYS"
                .into(),
        );
    }
    if settings.admin.keys.iter().any(|k| k.starts_with("dev-")) {
        out.push("the development admin key of the shipped config.toml opens the dashboard: set HERALD__ADMIN__KEYS".into());
    }
    if settings.api.keys.iter().all(|k| k.is_empty()) {
        out.push("api.keys is empty: the HTTP API refuses every request".into());
    }
    if !settings.auth.required {
        out.push("auth.required is false: anonymous sockets may connect".into());
    }
    if settings.storage.in_memory && settings.redis.url.is_empty() {
        out.push("storage.in_memory is true: stored notifications are lost on restart".into());
    }
    out
}

/// Where `herald probe` finds this instance by default: loopback, unless `server.host` names
/// one address.
fn probe_address(settings: &Settings) -> String {
    let host = match settings.server.host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() && ip.is_ipv6() => "[::1]".to_string(),
        Ok(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        Ok(ip) => ip.to_string(),
        Err(_) => settings.server.host.clone(),
    };
    format!("{host}:{}", settings.server.port)
}

/// One HTTP GET (no redirects followed); the status code of the answer.
async fn probe(url: &str) -> anyhow::Result<u16> {
    if !url.starts_with("http://") {
        anyhow::bail!("only http:// URLs can be probed");
    }
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).user_agent("herald-probe").build()?;
    let response = client.get(url).send().await.map_err(|e| anyhow::anyhow!("cannot connect: {e}"))?;
    Ok(response.status().as_u16())
}

/// The shipped `config.toml` carries development credentials so the first run works; say so.
fn warn_about_development_secrets(settings: &Settings) {
    if settings.auth.jwt_secret.starts_with("dev-") || settings.api.keys.iter().any(|k| k.starts_with("dev-")) {
        tracing::warn!("running with the development jwt_secret / api key from config.toml: set HERALD__AUTH__JWT_SECRET and HERALD__API__KEYS in production");
    }
    if settings.admin.keys.iter().any(|k| k.starts_with("dev-")) {
        tracing::warn!("the development admin key from config.toml opens the dashboard: set HERALD__ADMIN__KEYS in production");
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
