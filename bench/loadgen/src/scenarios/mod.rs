//! The scenarios the parent drives, one module each, and what they share: the connect phase
//! (spawn the workers, wait until every socket is ready, sample the server) and the HTTP client
//! for `POST /api/v1/notify`.

pub mod connect;
pub mod fanout;
pub mod redis;
pub mod targeted;

use std::time::Duration;

use crate::cli::Common;
use crate::procfs::{sample, ProcSample};
use crate::workers::{sum_ready, ReadyTotals, Workers};

pub async fn connect_phase(common: &Common, mode: &str) -> Result<(Workers, ReadyTotals, Option<ProcSample>, Option<ProcSample>), String> {
    let before = sample(&common.server_pid);
    let mut workers = Workers::spawn(common, mode).await?;
    let mut other = vec![];
    let ready = workers.gather("ready", Duration::from_secs(common.max_secs + 10), &mut other).await;
    if ready.len() < workers.count {
        workers.finish().await;
        return Err(format!("only {} of {} workers became ready", ready.len(), common.workers.max(1)));
    }
    let totals = sum_ready(&ready);
    eprintln!(
        "[{}] connected {}/{} ({} polling, {} joined) in {:.2}s = {:.0}/s; failed {} {:?}",
        common.server_name,
        totals.connected,
        common.conns,
        totals.polling,
        totals.joined,
        totals.connect_secs,
        totals.connected as f64 / totals.connect_secs.max(1e-9),
        totals.failed,
        totals.errors
    );
    tokio::time::sleep(Duration::from_secs(common.settle_secs)).await;
    let after = sample(&common.server_pid);
    Ok((workers, totals, before, after))
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(512).tcp_nodelay(true).build().expect("http client")
}
