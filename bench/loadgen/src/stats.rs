//! Numbers: wall-clock microseconds (the latency probe), HDR histograms and how they travel
//! between processes (JSON `[value, count]` pairs, merged in the parent), percentiles in ms and
//! JSON numbers rounded to three decimals (NaN becomes `null`).

use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64
}

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

pub fn hist_to_json(h: &Histogram<u64>) -> Value {
    Value::Array(h.iter_recorded().map(|v| json!([v.value_iterated_to(), v.count_at_value()])).collect())
}

pub fn hist_add_json(h: &mut Histogram<u64>, v: &Value) {
    if let Some(items) = v.as_array() {
        for item in items {
            let (Some(value), Some(count)) = (item[0].as_u64(), item[1].as_u64()) else { continue };
            h.saturating_record_n(value.max(1), count);
        }
    }
}

pub fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 1000.0).round() / 1000.0
}

pub fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return f64::NAN;
    }
    ms(h.value_at_quantile(q))
}

pub fn jnum(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}
