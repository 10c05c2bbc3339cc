//! Results: one JSON line per result (scenario figures plus `server`, `tag`, `time`) on stdout
//! and appended to `--out`, which `bench/plot.py` turns into tables and plots.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::cli::Common;

pub fn emit_result(common: &Common, mut v: Value) {
    v["server"] = json!(common.server_name);
    v["tag"] = json!(common.tag);
    v["time"] = json!(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs());
    let line = v.to_string();
    println!("{line}");
    if let Some(path) = &common.out {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}
