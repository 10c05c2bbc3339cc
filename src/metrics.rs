//! Counters, histograms and gauges for `/metrics` (SPEC §8), kept by `prometheus-client` and
//! rendered in the Prometheus text format (version 0.0.4).
//!
//! One registry per [`Application`](crate::startup::Application), not a process-wide global, so
//! that tests running several instances in one process see their own numbers. Every metric is
//! declared once below, with its help text and label names; label values always come from a
//! fixed set chosen by Herald (never a raw client string), which keeps the number of series
//! bounded whatever clients send.
//!
//! Call sites name a metric and its labels (`metrics.inc("herald_stored_total", &[("outcome",
//! "stored")])`). Each call costs a lookup of the family by name, a read lock and a hash lookup
//! of the label values in a cache of series handles, then an atomic add: no allocation, except
//! the first time a series is seen.

use std::hash::{Hash, Hasher};
use std::sync::atomic::AtomicU64;
use std::sync::RwLock;

use hashbrown::{Equivalent, HashMap};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the latency histogram buckets: 0.5 ms to 2.5 s (and `+Inf`).
pub const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// One metric: its name as `/metrics` shows it, its label names (in the order call sites give
/// them), and its help text.
pub struct Def {
    pub name: &'static str,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn def(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Def {
    Def { name, labels, help }
}

/// Every counter. Names end with `_total` as shown; `prometheus-client` adds that suffix itself,
/// so they are registered without it and come out unchanged.
pub const COUNTERS: &[Def] = &[
    def("herald_connects_total", &[], "Sockets that connected to this instance"),
    def("herald_disconnects_total", &["reason"], "Sockets that disconnected from this instance, by Socket.IO disconnect reason"),
    def("herald_refusals_total", &["reason"], "Connection attempts refused (token, limits, origin), by reason"),
    def("herald_events_in_total", &["event"], "Events received from clients, by event (unknown events count as other)"),
    def("herald_event_refusals_total", &["reason"], "Client events refused by the per-socket rate limit (rate_limited, abuse_disconnect)"),
    def("herald_room_refusals_total", &["reason"], "room:join and room:leave requests refused, by reason"),
    def("herald_token_expiries_total", &[], "Sockets told that their token expired"),
    def("herald_token_refreshes_total", &["outcome"], "auth:refresh requests, by outcome"),
    def("herald_events_out_total", &["event"], "Events emitted by commands, by event (events that are not stored count as other)"),
    def(
        "herald_commands_total",
        &["source", "kind", "outcome"],
        "Commands applied on the delivery path, by ingress source, kind and outcome",
    ),
    def("herald_ingress_messages_total", &["source", "outcome"], "Messages read from the Redis ingress, by source and outcome"),
    def("herald_stored_total", &["outcome"], "Appends of notifications to the store (stored, duplicate, failed)"),
    def("herald_outbox_total", &["outcome"], "Outbox entries, by outcome (queued, refused, flushed, dropped)"),
    def("herald_replayed_total", &[], "Stored notifications sent again to reconnecting sockets"),
    def("herald_replay_failures_total", &[], "Replays skipped because the store was unavailable"),
    def("herald_relay_caught_up_total", &[], "Stored notifications applied from the relay log after a gap in this instance's subscription"),
    def("herald_cluster_fallbacks_total", &[], "Commands that could not reach the other instances through the adapter (queued or refused)"),
    def("herald_unreachable_sockets_total", &[], "Sockets that missed a packet because they were closed or too slow"),
    def("herald_api_refusals_total", &["reason"], "HTTP API requests refused (unauthorized, bad_request, unavailable, admin_unauthorized)"),
    def("herald_presence_transitions_total", &["kind"], "Presence transitions announced by this instance (online, offline, join, leave)"),
    def("herald_webhook_events_total", &["event"], "Webhook events made by this instance, by event type"),
    def(
        "herald_webhook_calls_total",
        &["outcome"],
        "Webhook calls, by outcome (delivered, retried, rejected, dropped_attempts, dropped_queue_full, dropped_batch_full, ...)",
    ),
    def("herald_ignored_input_total", &["what"], "Client input ignored because it was malformed (e.g. auth.device)"),
    def("herald_plain_connects_total", &[], "Plain WebSocket clients that connected to this instance"),
    def("herald_plain_frames_refused_total", &["reason"], "Frames from plain WebSocket clients refused (too_big, binary, bad_json, ...)"),
];

/// Every histogram; observations in seconds, buckets [`BUCKETS`].
pub const HISTOGRAMS: &[Def] = &[def(
    "herald_delivery_latency_seconds",
    &["source"],
    "Seconds from a command reaching the delivery path to its packets queued on the sockets, by ingress source",
)];

/// Every gauge: values read when `/metrics` is scraped, given to [`Metrics::render`]. Integer
/// gauges show integers; `herald_uptime_seconds` is fractional.
pub const GAUGES: &[Def] = &[
    def("herald_connections", &[], "Sockets connected to this instance"),
    def("herald_uptime_seconds", &[], "Seconds since this instance started"),
    def("herald_redis_up", &[], "1 when Redis is reachable, 0 when not, -1 without Redis"),
    def("herald_redis_outages", &[], "Redis outages since start"),
    def("herald_redis_messages_dropped", &[], "Redis pub/sub messages dropped because this instance did not keep up"),
    def("herald_webhook_queue", &[], "Webhook calls waiting or in flight on this instance"),
    def("herald_connections_socketio", &[], "Socket.IO sockets connected to this instance"),
    def("herald_connections_websocket", &[], "Plain WebSocket sockets connected to this instance"),
];

const FRACTIONAL_GAUGES: &[&str] = &["herald_uptime_seconds"];

/// A series' label pairs as the family keeps them.
type Labels = Vec<(&'static str, String)>;

fn new_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// A family plus a cache of its series' handles keyed by label values, looked up without
/// allocating. Like every family, it shows nothing until its first series is made, so a metric
/// appears on `/metrics` with its first event (as Herald always did).
struct Series<M, C> {
    labels: &'static [&'static str],
    family: Family<Labels, M, C>,
    cache: RwLock<HashMap<Key, M>>,
}

impl<M: Clone, C: MetricConstructor<M>> Series<M, C> {
    fn new(labels: &'static [&'static str], constructor: C) -> Series<M, C> {
        Series { labels, family: Family::new_with_constructor(constructor), cache: RwLock::default() }
    }

    fn with(&self, name: &str, given: &[(&'static str, &str)], f: impl FnOnce(&M)) {
        debug_assert!(
            self.labels.len() == given.len() && self.labels.iter().zip(given).all(|(l, (g, _))| l == g),
            "{name} has labels {:?}, given {given:?}",
            self.labels
        );
        let lookup = Lookup(given);
        if let Some(metric) = self.cache.read().unwrap_or_else(|e| e.into_inner()).get(&lookup) {
            return f(metric);
        }
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        let metric = cache.entry_ref(&lookup).or_insert_with(|| {
            let pairs: Labels = given.iter().map(|(k, v)| (*k, v.to_string())).collect();
            self.family.get_or_create_owned(&pairs)
        });
        f(metric)
    }
}

/// The label values of a series, in the order of the metric's label names.
#[derive(PartialEq, Eq)]
struct Key(Box<[Box<str>]>);

/// The label values a call site gives, to look a [`Key`] up without building one.
struct Lookup<'a, 'b>(&'a [(&'static str, &'b str)]);

fn hash_values<'v, H: Hasher>(values: impl Iterator<Item = &'v str>, state: &mut H) {
    for value in values {
        state.write(value.as_bytes());
        state.write_u8(0xff);
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_values(self.0.iter().map(|v| &**v), state)
    }
}

impl Hash for Lookup<'_, '_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_values(self.0.iter().map(|(_, v)| *v), state)
    }
}

impl Equivalent<Key> for Lookup<'_, '_> {
    fn equivalent(&self, key: &Key) -> bool {
        key.0.len() == self.0.len() && key.0.iter().zip(self.0).all(|(k, (_, v))| &**k == *v)
    }
}

impl From<&Lookup<'_, '_>> for Key {
    fn from(lookup: &Lookup<'_, '_>) -> Key {
        Key(lookup.0.iter().map(|(_, v)| Box::from(*v)).collect())
    }
}

enum GaugeSlot {
    Integer(Gauge),
    Fractional(Gauge<f64, AtomicU64>),
}

type Counters = Series<Counter, fn() -> Counter>;
type Histograms = Series<Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    counters: HashMap<&'static str, Counters>,
    histograms: HashMap<&'static str, Histograms>,
    gauges: HashMap<&'static str, GaugeSlot>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric of [`COUNTERS`], [`HISTOGRAMS`] and [`GAUGES`].
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let mut counters = HashMap::new();
        for d in COUNTERS {
            let series = Series::new(d.labels, Counter::default as fn() -> Counter);
            // prometheus-client appends `_total` to a counter's name.
            let family_name = d.name.strip_suffix("_total").expect("counter names end with _total");
            registry.register(family_name, d.help, series.family.clone());
            counters.insert(d.name, series);
        }
        let mut histograms = HashMap::new();
        for d in HISTOGRAMS {
            let series = Series::new(d.labels, new_histogram as fn() -> Histogram);
            registry.register(d.name, d.help, series.family.clone());
            histograms.insert(d.name, series);
        }
        let mut gauges = HashMap::new();
        for d in GAUGES {
            let slot = if FRACTIONAL_GAUGES.contains(&d.name) {
                let gauge = Gauge::<f64, AtomicU64>::default();
                registry.register(d.name, d.help, gauge.clone());
                GaugeSlot::Fractional(gauge)
            } else {
                let gauge = Gauge::default();
                registry.register(d.name, d.help, gauge.clone());
                GaugeSlot::Integer(gauge)
            };
            gauges.insert(d.name, slot);
        }
        Metrics { registry, counters, histograms, gauges }
    }

    /// Adds one to the counter `name` with `labels`.
    pub fn inc(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        self.add(name, labels, 1);
    }

    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], n: u64) {
        match self.counters.get(name) {
            Some(series) => series.with(name, labels, |counter| {
                counter.inc_by(n);
            }),
            None => unknown(name),
        }
    }

    /// Records one observation (in seconds) in the histogram `name` with `labels`.
    pub fn observe(&self, name: &'static str, labels: &[(&'static str, &str)], seconds: f64) {
        match self.histograms.get(name) {
            Some(series) => series.with(name, labels, |histogram| histogram.observe(seconds)),
            None => unknown(name),
        }
    }

    /// The sum of every series of the counter `name` (the dashboard's rates).
    pub fn total(&self, name: &str) -> u64 {
        self.counters.get(name).map_or(0, |series| series.cache.read().unwrap_or_else(|e| e.into_inner()).values().map(|c| c.get()).sum())
    }

    /// The current value of one counter series.
    #[cfg(test)]
    fn get(&self, name: &'static str, labels: &[(&'static str, &str)]) -> u64 {
        let mut value = 0;
        self.counters[name].with(name, labels, |c| value = c.get());
        value
    }

    /// Sets the gauges to the values read at scrape time, then renders every metric in the
    /// Prometheus text format ([`CONTENT_TYPE`]).
    pub fn render(&self, gauges: &[(&'static str, f64)]) -> String {
        for (name, value) in gauges {
            match self.gauges.get(name) {
                Some(GaugeSlot::Integer(gauge)) => {
                    gauge.set(*value as i64);
                }
                Some(GaugeSlot::Fractional(gauge)) => {
                    gauge.set(*value);
                }
                None => unknown(name),
            }
        }
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String does not fail");
        out
    }
}

/// A metric missing from the tables above: a bug (every call site is checked by a test).
#[cold]
fn unknown(name: &str) {
    debug_assert!(false, "metric {name} is not declared in metrics.rs");
    tracing::error!(name, "metric not declared in metrics.rs: not counted");
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
        m.add("herald_replayed_total", &[], 5);
        assert_eq!(m.get("herald_refusals_total", &[("reason", "invalid token")]), 2);
        let text = m.render(&[("herald_connections", 3.0), ("herald_uptime_seconds", 1.5), ("herald_redis_up", -1.0)]);
        assert!(text.contains("# TYPE herald_refusals_total counter\n"), "{text}");
        assert!(text.contains("herald_refusals_total{reason=\"invalid token\"} 2\n"), "{text}");
        assert!(text.contains("herald_refusals_total{reason=\"say \\\"hi\\\"\"} 1\n"));
        assert!(text.contains("herald_replayed_total 5\n"), "{text}");
        assert!(!text.contains("herald_connects_total"), "a metric shows from its first event: {text}");
        assert!(text.contains("herald_connections 3\n"));
        assert!(text.contains("herald_redis_up -1\n"));
        assert!(text.contains("herald_uptime_seconds 1.5\n"));
    }

    #[test]
    fn renders_histograms_with_cumulative_buckets() {
        let m = Metrics::default();
        m.observe("herald_delivery_latency_seconds", &[("source", "python")], 0.002);
        m.observe("herald_delivery_latency_seconds", &[("source", "python")], 0.2);
        let text = m.render(&[]);
        assert!(text.contains("# TYPE herald_delivery_latency_seconds histogram\n"), "{text}");
        assert!(text.contains("herald_delivery_latency_seconds_bucket{source=\"python\",le=\"0.001\"} 0\n"), "{text}");
        assert!(text.contains("herald_delivery_latency_seconds_bucket{source=\"python\",le=\"0.0025\"} 1\n"), "{text}");
        assert!(text.contains("herald_delivery_latency_seconds_bucket{source=\"python\",le=\"1\"} 2\n"), "{text}");
        assert!(text.contains("herald_delivery_latency_seconds_bucket{source=\"python\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("herald_delivery_latency_seconds_count{source=\"python\"} 2\n"));
        assert!(text.contains("herald_delivery_latency_seconds_sum{source=\"python\"} 0.202\n"), "{text}");
    }

    #[test]
    fn series_are_kept_apart_by_every_label_value() {
        let m = Metrics::default();
        let owned = String::from("notification");
        m.inc("herald_events_out_total", &[("event", owned.as_str())]);
        m.inc("herald_events_out_total", &[("event", "notification")]);
        m.inc("herald_events_out_total", &[("event", "other")]);
        m.inc("herald_commands_total", &[("source", "api"), ("kind", "emit"), ("outcome", "ok")]);
        m.inc("herald_commands_total", &[("source", "api"), ("kind", "emit"), ("outcome", "unavailable")]);
        m.inc("herald_commands_total", &[("source", "apie"), ("kind", "mit"), ("outcome", "ok")]);
        assert_eq!(m.get("herald_events_out_total", &[("event", "notification")]), 2);
        assert_eq!(m.get("herald_events_out_total", &[("event", "other")]), 1);
        assert_eq!(m.get("herald_commands_total", &[("source", "api"), ("kind", "emit"), ("outcome", "ok")]), 1);
        assert_eq!(m.get("herald_commands_total", &[("source", "apie"), ("kind", "mit"), ("outcome", "ok")]), 1);
        let text = m.render(&[]);
        assert!(text.contains("herald_commands_total{source=\"api\",kind=\"emit\",outcome=\"unavailable\"} 1\n"), "{text}");
    }

    #[test]
    fn instances_count_apart() {
        let (a, b) = (Metrics::default(), Metrics::default());
        a.inc("herald_connects_total", &[]);
        b.add("herald_connects_total", &[], 2);
        assert!(a.render(&[]).contains("herald_connects_total 1\n"));
        assert!(b.render(&[]).contains("herald_connects_total 2\n"));
    }

    /// Every line of the exposition is a HELP, a TYPE or a sample of a declared family, each
    /// family has help text and a type, and every documented name is there.
    #[test]
    fn the_exposition_parses_and_shows_every_documented_name() {
        let m = Metrics::default();
        for d in COUNTERS {
            let labels: Vec<(&'static str, &str)> = d.labels.iter().map(|l| (*l, "x")).collect();
            m.inc(d.name, &labels);
        }
        m.observe("herald_delivery_latency_seconds", &[("source", "api")], 0.01);
        let gauges: Vec<(&'static str, f64)> = GAUGES.iter().map(|g| (g.name, 1.0)).collect();
        let text = m.render(&gauges);
        let help = regex::Regex::new(r"^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) \S.*$").unwrap();
        let kind = regex::Regex::new(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram)$").unwrap();
        let sample = regex::Regex::new(
            r#"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*\})? (-?[0-9.e+-]+|\+Inf|-Inf|NaN)$"#,
        )
        .unwrap();
        let mut helped = std::collections::BTreeSet::new();
        let mut typed = std::collections::BTreeMap::new();
        let mut sampled = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(c) = help.captures(line) {
                helped.insert(c[1].to_string());
            } else if let Some(c) = kind.captures(line) {
                typed.insert(c[1].to_string(), c[2].to_string());
            } else if let Some(c) = sample.captures(line) {
                let name = &c[1];
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| typed.get(*f).is_some_and(|t| t == "histogram")))
                    .unwrap_or(name);
                assert!(typed.contains_key(family), "sample {line:?} before its TYPE line");
                sampled.insert(family.to_string());
            } else {
                panic!("line {line:?} is neither HELP, TYPE nor a sample:\n{text}");
            }
        }
        for (defs, kind) in [(COUNTERS, "counter"), (HISTOGRAMS, "histogram"), (GAUGES, "gauge")] {
            for d in defs {
                assert!(helped.contains(d.name), "{} has no HELP line", d.name);
                assert_eq!(typed.get(d.name).map(String::as_str), Some(kind), "{} TYPE", d.name);
                assert!(!d.help.is_empty() && !d.help.ends_with('.'), "{}: help text (the registry adds the period)", d.name);
            }
        }
        assert_eq!(helped.len(), COUNTERS.len() + HISTOGRAMS.len() + GAUGES.len(), "{text}");
        // The names README documents for /metrics.
        let readme = include_str!("../README.md");
        let documented = regex::Regex::new(r"`(herald_[a-z_]+)(?:\{[a-z,]+\})?`").unwrap();
        let names: Vec<&str> = documented.captures_iter(readme).map(|c| c.get(1).unwrap().as_str()).collect();
        assert!(names.len() >= 15, "README lists the metric names: {names:?}");
        for name in names {
            assert!(sampled.contains(name), "README documents {name}, /metrics does not show it:\n{text}");
        }
        assert_eq!(sampled, helped, "every family has samples");
    }

    /// Every metric a call site names is declared above, with the labels it gives.
    #[test]
    fn every_call_site_names_a_declared_metric_with_its_labels() {
        let call = regex::Regex::new(r#"\.(inc|add|observe)\(\s*"(herald_[a-z_]+)",\s*&\[([^\]]*)\]"#).unwrap();
        let label = regex::Regex::new(r#"\("([a-z_]+)","#).unwrap();
        let mut files = vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
        let mut seen = 0;
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("metrics.rs") {
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap();
            for c in call.captures_iter(&source) {
                let defs = if &c[1] == "observe" { HISTOGRAMS } else { COUNTERS };
                let name = &c[2];
                let d = defs.iter().find(|d| d.name == name).unwrap_or_else(|| panic!("{}: {name} is not declared", path.display()));
                let given: Vec<&str> = label.captures_iter(&c[3]).map(|l| l.get(1).unwrap().as_str()).collect();
                assert_eq!(given, d.labels, "{}: labels of {name}", path.display());
                seen += 1;
            }
        }
        assert!(seen >= 30, "found the call sites ({seen})");
    }
}

#[cfg(test)]
mod bench {
    use super::*;
    use std::time::Instant;

    /// What one increment and one observation cost, as the delivery path makes them: `cargo
    /// test --release --lib metrics::bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn cost_per_call() {
        const N: u32 = 2_000_000;
        let m = std::sync::Arc::new(Metrics::default());
        let event = String::from("notification");
        let started = Instant::now();
        for _ in 0..N {
            m.inc("herald_commands_total", &[("source", "api"), ("kind", "emit"), ("outcome", "ok")]);
            m.inc("herald_events_out_total", &[("event", event.as_str())]);
        }
        let inc = started.elapsed().as_nanos() as f64 / (2 * N) as f64;
        let started = Instant::now();
        for _ in 0..N {
            m.observe("herald_delivery_latency_seconds", &[("source", "api")], 0.0012);
        }
        let observe = started.elapsed().as_nanos() as f64 / N as f64;
        let started = Instant::now();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..N {
                        m.inc("herald_commands_total", &[("source", "api"), ("kind", "emit"), ("outcome", "ok")]);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let contended = started.elapsed().as_nanos() as f64 / (2 * N) as f64;
        println!("inc {inc:.1} ns, observe {observe:.1} ns, inc on 2 threads {contended:.1} ns (wall per call)");
    }
}
