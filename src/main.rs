//! The `herald` command: serve (default), or mint a development token.

use std::path::PathBuf;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let explicit = cli.config.is_some();
    let path = cli.config.unwrap_or_else(|| PathBuf::from("config.toml"));
    let settings = Settings::load(&path, explicit).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;

    match cli.command.unwrap_or(Command::Serve) {
        Command::Token { user, role, projects, ttl } => {
            if settings.auth.jwt_secret.is_empty() {
                anyhow::bail!("auth.jwt_secret is not set: set it in {} or HERALD__AUTH__JWT_SECRET", path.display());
            }
            println!("{}", mint_dev_token(&settings.auth.jwt_secret, &user, role.as_deref(), &projects, ttl)?);
            Ok(())
        }
        Command::Serve => {
            telemetry::init(cli.log_format);
            warn_about_development_secrets(&settings);
            let app = Application::build(settings).await?;
            app.run_until_stopped(shutdown_signal()).await
        }
    }
}

/// The shipped `config.toml` carries development credentials so the first run works; say so.
fn warn_about_development_secrets(settings: &Settings) {
    if settings.auth.jwt_secret.starts_with("dev-") || settings.api.keys.iter().any(|k| k.starts_with("dev-")) {
        tracing::warn!("running with the development jwt_secret / api key from config.toml: set HERALD__AUTH__JWT_SECRET and HERALD__API__KEYS in production");
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
