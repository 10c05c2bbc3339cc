//! The names of Herald's Redis keys and channels, in one place.
//!
//! Every name starts with `herald:`; against a Redis Cluster it starts with `{herald}:`
//! instead. The braces are a hash tag: Redis Cluster puts every key whose tag is `herald` in
//! the same slot, so each Lua step (an append touches a message's streams, the id counter, the
//! relay log, the dedup and idempotency keys at once) only touches keys of one slot, as a
//! cluster requires. One slot is deliberate: ids are ordered across all of a user's rooms by
//! one counter (a client resuming after one id never skips another room's entry), which no
//! split of the keys over slots could keep atomic.
//!
//! The form is process-wide: [`use_cluster_form`] is called once, when a process connects to a
//! Redis Cluster (the embedded default and plain Redis never call it). One process talks to one
//! Redis deployment; tests of the cluster form run Herald as separate processes.

use std::sync::atomic::{AtomicBool, Ordering};

static CLUSTER_FORM: AtomicBool = AtomicBool::new(false);

/// From now on every name takes the hash-tagged form `{herald}:…`.
pub fn use_cluster_form() {
    CLUSTER_FORM.store(true, Ordering::Relaxed);
}

/// Whether names take the cluster form (and Herald's relay uses sharded pub/sub).
pub fn cluster_form() -> bool {
    CLUSTER_FORM.load(Ordering::Relaxed)
}

/// `herald` or, against a Redis Cluster, `{herald}`.
pub fn prefix() -> &'static str {
    if CLUSTER_FORM.load(Ordering::Relaxed) {
        "{herald}"
    } else {
        "herald"
    }
}

/// `<prefix>:<rest>`, e.g. `redis_key!("seen:{user}")`: `format!` arguments, the prefix added
/// in front. A macro (not a function taking `format_args!`) so that no borrowed formatting
/// state is held across an `.await` of the statement that uses the name.
macro_rules! redis_key {
    ($($rest:tt)*) => {{
        let mut name = String::with_capacity(48);
        name.push_str($crate::cluster::keys::prefix());
        name.push(':');
        std::fmt::Write::write_fmt(&mut name, format_args!($($rest)*)).expect("writing to a String");
        name
    }};
}
pub(crate) use redis_key;

#[cfg(test)]
mod tests {

    #[test]
    fn names_carry_the_prefix() {
        // The unit tests run in plain form (nothing in this process calls use_cluster_form).
        let user = "u1";
        assert_eq!(redis_key!("seen:{user}"), "herald:seen:u1");
    }
}
