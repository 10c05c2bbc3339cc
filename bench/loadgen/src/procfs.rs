//! The operating system side: this process's open-file limit (held to 20,000, the bench's
//! bound), and the server's RSS and CPU read from `/proc/<pid>/status` and `/proc/<pid>/stat`
//! (several pids for a cluster, summed).

pub fn raise_nofile() {
    // Each process may hold at most 20,000 open files: raise the soft limit up to that, no further.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            let want = lim.rlim_max.min(20_000);
            if lim.rlim_cur < want {
                lim.rlim_cur = want;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub rss_kb: u64,
    pub cpu_ticks: u64,
}

pub fn clk_tck() -> f64 {
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// RSS and CPU of the server processes, summed (`None` without pids or when one is gone).
pub fn sample(pids: &[u32]) -> Option<ProcSample> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().try_fold(ProcSample { rss_kb: 0, cpu_ticks: 0 }, |total, pid| {
        let one = sample_one(*pid)?;
        Some(ProcSample { rss_kb: total.rss_kb + one.rss_kb, cpu_ticks: total.cpu_ticks + one.cpu_ticks })
    })
}

pub fn sample_one(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // after "pid (comm) ": field 3 is index 0, so utime (14) is 11 and stime (15) is 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ProcSample { rss_kb, cpu_ticks: utime + stime })
}

pub fn cpu_secs(a: Option<ProcSample>, b: Option<ProcSample>) -> Option<f64> {
    Some((b?.cpu_ticks.saturating_sub(a?.cpu_ticks)) as f64 / clk_tck())
}
