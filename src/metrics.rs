//! Counters for `/metrics`, in Prometheus text format (SPEC §8).
//!
//! One registry per [`Application`](crate::startup::Application), not a process-wide global, so
//! that tests running several instances in one process see their own numbers. Label values
//! always come from a fixed set chosen by Herald (never a raw client string), which keeps the
//! number of series bounded whatever clients send.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
}

impl Metrics {
    /// Adds one to the counter `name` with `labels`.
    pub fn inc(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        self.add(name, labels, 1);
    }

    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], n: u64) {
        let rendered = render_labels(labels);
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        *counters.entry(name.to_string()).or_default().entry(rendered).or_default() += n;
    }

    /// The current value of one series (for tests and `/health`).
    pub fn get(&self, name: &str, labels: &[(&'static str, &str)]) -> u64 {
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        counters.get(name).and_then(|series| series.get(&render_labels(labels))).copied().unwrap_or(0)
    }

    /// Renders every counter, then the `gauges` given by the caller (values read at scrape time).
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        for (name, series) in counters.iter() {
            let _ = writeln!(out, "# TYPE {name} counter");
            for (labels, value) in series {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        }
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        out
    }
}

fn render_labels(labels: &[(&'static str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let mut out = String::from("{");
    for (i, (key, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let _ = write!(out, "{key}=\"{escaped}\"");
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        m.inc("herald_refusals_total", &[("reason", "invalid token")]);
        m.inc("herald_refusals_total", &[("reason", "invalid token")]);
        m.inc("herald_refusals_total", &[("reason", "say \"hi\"")]);
        assert_eq!(m.get("herald_refusals_total", &[("reason", "invalid token")]), 2);
        let text = m.render(&[("herald_connections", "open sockets", 3.0)]);
        assert!(text.contains("herald_refusals_total{reason=\"invalid token\"} 2\n"));
        assert!(text.contains("herald_refusals_total{reason=\"say \\\"hi\\\"\"} 1\n"));
        assert!(text.contains("herald_connections 3\n"));
    }
}
