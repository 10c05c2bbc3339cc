//! Limits that keep one client (or one address) from taking the server from everyone else
//! (SPEC §1 `limits.*`, §8): connections per instance, per user and per IP per minute, and
//! events per second per socket. Each refusal is counted in `/metrics` by the caller.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::Refusal;
use crate::configuration::LimitSettings;

/// Counts this instance's sockets, overall and per user.
#[derive(Default)]
pub struct ConnectionCounts {
    inner: Mutex<(usize, HashMap<String, usize>)>,
}

impl ConnectionCounts {
    /// Takes a place for a socket of `user`, or says which limit it would break.
    pub fn try_add(&self, user: Option<&str>, limits: &LimitSettings) -> Result<(), Refusal> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.0 >= limits.max_connections {
            return Err(Refusal::ServerFull);
        }
        if let Some(user) = user {
            let count = inner.1.get(user).copied().unwrap_or(0);
            if count >= limits.max_connections_per_user {
                return Err(Refusal::TooManyConnections);
            }
            inner.1.insert(user.to_string(), count + 1);
        }
        inner.0 += 1;
        Ok(())
    }

    /// Gives back the place a socket took.
    pub fn remove(&self, user: Option<&str>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.0 = inner.0.saturating_sub(1);
        if let Some(user) = user {
            if let Some(count) = inner.1.get_mut(user) {
                *count -= 1;
                if *count == 0 {
                    inner.1.remove(user);
                }
            }
        }
    }

    pub fn total(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// The users with at least one socket here.
    pub fn users(&self) -> Vec<String> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).1.keys().cloned().collect()
    }

    /// How many sockets `user` has here.
    pub fn of_user(&self, user: &str) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).1.get(user).copied().unwrap_or(0)
    }
}

/// New connections per client IP over a sliding minute (two fixed windows, weighted).
pub struct ConnectRate {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, Windows>>,
}

#[derive(Clone, Copy)]
struct Windows {
    started: Instant,
    previous: u32,
    current: u32,
}

const WINDOW: Duration = Duration::from_secs(60);

impl ConnectRate {
    pub fn new(per_minute: u32) -> ConnectRate {
        ConnectRate { per_minute, windows: Mutex::new(HashMap::new()) }
    }

    /// Counts one connect from `ip`; false when it is over the limit (0 = no limit).
    pub fn allow(&self, ip: IpAddr) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() > 100_000 {
            windows.retain(|_, w| now.duration_since(w.started) < 2 * WINDOW);
        }
        let w = windows.entry(ip).or_insert(Windows { started: now, previous: 0, current: 0 });
        let elapsed = now.duration_since(w.started);
        if elapsed >= 2 * WINDOW {
            *w = Windows { started: now, previous: 0, current: 0 };
        } else if elapsed >= WINDOW {
            *w = Windows { started: w.started + WINDOW, previous: w.current, current: 0 };
        }
        let into_window = now.duration_since(w.started).as_secs_f64() / WINDOW.as_secs_f64();
        let estimate = w.previous as f64 * (1.0 - into_window) + w.current as f64;
        if estimate >= self.per_minute as f64 {
            return false;
        }
        w.current += 1;
        true
    }
}

/// Events per second for one socket: a token bucket holding up to twice the rate.
pub struct EventBucket {
    rate: f64,
    state: Mutex<BucketState>,
}

struct BucketState {
    tokens: f64,
    refilled: Instant,
    /// Events refused in the current abuse window; past a threshold the socket is dropped.
    refused: u32,
    window_started: Instant,
}

/// The window over which refused events are counted as abuse.
const ABUSE_WINDOW: Duration = Duration::from_secs(10);

/// What to do with one event.
#[derive(Debug, PartialEq, Eq)]
pub enum EventVerdict {
    Allow,
    /// Over the rate: answer with an error.
    Refuse,
    /// Kept sending far past the rate: disconnect the socket.
    Disconnect,
}

impl EventBucket {
    pub fn new(per_second: u32) -> EventBucket {
        let rate = per_second.max(1) as f64;
        let now = Instant::now();
        EventBucket { rate, state: Mutex::new(BucketState { tokens: 2.0 * rate, refilled: now, refused: 0, window_started: now }) }
    }

    pub fn take(&self) -> EventVerdict {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        s.tokens = (s.tokens + now.duration_since(s.refilled).as_secs_f64() * self.rate).min(2.0 * self.rate);
        s.refilled = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            return EventVerdict::Allow;
        }
        if now.duration_since(s.window_started) > ABUSE_WINDOW {
            s.window_started = now;
            s.refused = 0;
        }
        s.refused += 1;
        // Refused events worth twenty seconds of the allowed rate (and at least 50) within ten
        // seconds: not a burst, a flood.
        if s.refused as f64 > (20.0 * self.rate).max(50.0) {
            EventVerdict::Disconnect
        } else {
            EventVerdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_counts_refuse_past_each_limit() {
        let limits = LimitSettings { max_connections: 3, max_connections_per_user: 2, ..Default::default() };
        let counts = ConnectionCounts::default();
        assert_eq!(counts.try_add(Some("a"), &limits), Ok(()));
        assert_eq!(counts.try_add(Some("a"), &limits), Ok(()));
        assert_eq!(counts.try_add(Some("a"), &limits), Err(Refusal::TooManyConnections));
        assert_eq!(counts.try_add(Some("b"), &limits), Ok(()));
        assert_eq!(counts.try_add(Some("c"), &limits), Err(Refusal::ServerFull));
        counts.remove(Some("a"));
        assert_eq!(counts.try_add(Some("a"), &limits), Ok(()));
        assert_eq!(counts.total(), 3);
    }

    #[test]
    fn connect_rate_allows_the_limit_per_address() {
        let rate = ConnectRate::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(rate.allow(a) && rate.allow(a) && rate.allow(a));
        assert!(!rate.allow(a));
        assert!(rate.allow(b));
        assert!(ConnectRate::new(0).allow(a));
    }

    #[test]
    fn event_bucket_allows_a_burst_then_refuses_then_disconnects() {
        let bucket = EventBucket::new(2);
        let verdicts: Vec<EventVerdict> = (0..60).map(|_| bucket.take()).collect();
        assert_eq!(verdicts.iter().filter(|v| **v == EventVerdict::Allow).count(), 4, "burst = 2x rate");
        assert_eq!(verdicts[4], EventVerdict::Refuse);
        assert_eq!(verdicts[53], EventVerdict::Refuse, "50 refusals are still a burst");
        assert_eq!(verdicts[54], EventVerdict::Disconnect);
    }
}
