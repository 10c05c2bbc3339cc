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
    histograms: Mutex<BTreeMap<String, BTreeMap<String, Histogram>>>,
}

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
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

    /// Records one observation (in seconds) in the histogram `name` with `labels`.
    pub fn observe(&self, name: &'static str, labels: &[(&'static str, &str)], seconds: f64) {
        let rendered = render_labels(labels);
        let mut histograms = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
        let h = histograms.entry(name.to_string()).or_default().entry(rendered).or_default();
        for (bound, count) in BUCKETS.iter().zip(h.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// The sum of every series of the counter `name` (the dashboard's rates).
    pub fn total(&self, name: &str) -> u64 {
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        counters.get(name).map_or(0, |series| series.values().sum())
    }

    /// The current value of one series.
    #[cfg(test)]
    fn get(&self, name: &str, labels: &[(&'static str, &str)]) -> u64 {
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
        drop(counters);
        let histograms = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
        for (name, series) in histograms.iter() {
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (labels, h) in series {
                let inner = labels.trim_start_matches('{').trim_end_matches('}');
                let sep = if inner.is_empty() { "" } else { "," };
                for (bound, count) in BUCKETS.iter().zip(h.counts.iter()) {
                    let _ = writeln!(out, "{name}_bucket{{{inner}{sep}le=\"{bound}\"}} {count}");
                }
                let _ = writeln!(out, "{name}_bucket{{{inner}{sep}le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "{name}_sum{labels} {}\n{name}_count{labels} {}", h.sum, h.count);
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

    #[test]
    fn renders_histograms_with_cumulative_buckets() {
        let m = Metrics::default();
        m.observe("herald_latency_seconds", &[("source", "python")], 0.002);
        m.observe("herald_latency_seconds", &[("source", "python")], 0.2);
        let text = m.render(&[]);
        assert!(text.contains("herald_latency_seconds_bucket{source=\"python\",le=\"0.0025\"} 1\n"), "{text}");
        assert!(text.contains("herald_latency_seconds_bucket{source=\"python\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("herald_latency_seconds_count{source=\"python\"} 2\n"));
    }
}
