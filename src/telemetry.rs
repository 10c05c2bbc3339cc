//! Logging: structured `tracing` output, level from `RUST_LOG` (default `info`), text or JSON;
//! and the last warnings and errors, kept for the dashboard ([`recent_problems`]).

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. Call once, at process start.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter).with(ProblemLog);
    match format {
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).init(),
        LogFormat::Json => registry.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)).init(),
    }
}

/// One warning or error as the dashboard shows it: the log line's message and fields, which
/// Herald never fills with tokens, secrets or payloads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Problem {
    pub at: String,
    pub level: String,
    pub target: String,
    pub message: String,
}

const KEPT: usize = 20;
static PROBLEMS: Mutex<VecDeque<Problem>> = Mutex::new(VecDeque::new());

/// The last warnings and errors of this process, newest last.
pub fn recent_problems() -> Vec<Problem> {
    PROBLEMS.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
}

struct ProblemLog;

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for ProblemLog {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let mut message = fields.0;
        message.truncate(300);
        let problem = Problem {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            level: if level == Level::ERROR { "error" } else { "warn" }.into(),
            target: event.metadata().target().to_string(),
            message,
        };
        let mut problems = PROBLEMS.lock().unwrap_or_else(|e| e.into_inner());
        if problems.len() == KEPT {
            problems.pop_front();
        }
        problems.push_back(problem);
    }
}
