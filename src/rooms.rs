//! Room names and the policy for rooms a client asks to join (SPEC §3, §4).
//!
//! Herald puts every socket in the rooms its token grants (`user_<id>`, `role_<role>`,
//! `project_<p>`) and in a room named by its sid. Clients may join more rooms only when the name
//! matches a `rooms.joinable` pattern, and never a `user_*`, `role_*` or `project_*` room their
//! token does not grant.

use crate::auth::Identity;

pub fn user_room(user_id: &str) -> String {
    format!("user_{user_id}")
}
/// The user a `user_<id>` room belongs to.
pub fn user_of_room(room: &str) -> Option<&str> {
    room.strip_prefix("user_")
}
/// The room of one user's sockets on one device: `user_<id>:<device>`. It matches `user_*`, so
/// it is stored and replayed like the user room, and only a token (or `auth.device`) grants it.
pub fn device_room(user_id: &str, device: &str) -> String {
    format!("user_{user_id}:{device}")
}
pub fn role_room(role: &str) -> String {
    format!("role_{role}")
}
pub fn project_room(project: &str) -> String {
    format!("project_{project}")
}

/// Prefixes of rooms that only a token can grant.
const GRANTED_PREFIXES: [&str; 3] = ["user_", "role_", "project_"];

/// The rooms an identity's token puts a socket in.
pub fn granted_rooms(identity: &Identity) -> Vec<String> {
    let mut rooms = vec![user_room(&identity.user_id)];
    rooms.extend(identity.device.as_deref().map(|d| device_room(&identity.user_id, d)));
    rooms.extend(identity.role.as_deref().map(role_room));
    rooms.extend(identity.projects.iter().map(|p| project_room(p)));
    rooms
}

/// Why a `room:join` was refused; `Display` is the `error` of the ack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefusal {
    #[error("room name must be a non-empty string")]
    Empty,
    #[error("room name longer than {0} bytes")]
    TooLong(usize),
    #[error("room name contains control characters")]
    ControlCharacters,
    #[error("room not granted by your token")]
    NotGranted,
    #[error("room not joinable")]
    NotJoinable,
    #[error("room limit reached ({0} rooms per socket)")]
    TooManyRooms(usize),
}

/// The compiled `rooms.joinable` patterns plus the name rules.
#[derive(Debug, Clone)]
pub struct RoomPolicy {
    patterns: Vec<Pattern>,
    max_name_bytes: usize,
}

impl RoomPolicy {
    pub fn new(joinable: &[String], max_name_bytes: usize) -> RoomPolicy {
        RoomPolicy { patterns: joinable.iter().map(|p| Pattern::new(p)).collect(), max_name_bytes }
    }

    /// Checks the name alone: what any room a client names must satisfy.
    pub fn check_name(&self, room: &str) -> Result<(), JoinRefusal> {
        if room.is_empty() {
            return Err(JoinRefusal::Empty);
        }
        if room.len() > self.max_name_bytes {
            return Err(JoinRefusal::TooLong(self.max_name_bytes));
        }
        if room.chars().any(char::is_control) {
            return Err(JoinRefusal::ControlCharacters);
        }
        Ok(())
    }

    /// May a socket with `granted` rooms join `room`?
    pub fn may_join(&self, room: &str, granted: &[String]) -> Result<(), JoinRefusal> {
        self.check_name(room)?;
        if granted.iter().any(|g| g == room) {
            return Ok(());
        }
        if GRANTED_PREFIXES.iter().any(|p| room.starts_with(p)) {
            return Err(JoinRefusal::NotGranted);
        }
        if self.patterns.iter().any(|p| p.matches(room)) {
            Ok(())
        } else {
            Err(JoinRefusal::NotJoinable)
        }
    }
}

/// A glob where `*` matches any run of characters (possibly empty).
#[derive(Debug, Clone)]
pub struct Pattern {
    parts: Vec<String>,
}

impl Pattern {
    pub fn new(glob: &str) -> Pattern {
        Pattern { parts: glob.split('*').map(String::from).collect() }
    }

    pub fn matches(&self, text: &str) -> bool {
        let (first, rest) = self.parts.split_first().expect("split yields at least one part");
        let Some(mut remaining) = text.strip_prefix(first.as_str()) else { return false };
        let Some((last, middle)) = rest.split_last() else { return remaining.is_empty() };
        for part in middle {
            match remaining.find(part.as_str()) {
                Some(at) => remaining = &remaining[at + part.len()..],
                None => return false,
            }
        }
        remaining.len() >= last.len() && remaining.ends_with(last.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RoomPolicy {
        let defaults = crate::configuration::RoomSettings::default();
        RoomPolicy::new(&defaults.joinable, defaults.max_name_bytes)
    }

    #[test]
    fn patterns_match_like_globs() {
        let p = Pattern::new("test-progress-*");
        assert!(p.matches("test-progress-12"));
        assert!(p.matches("test-progress-"));
        assert!(!p.matches("test-progress"));
        assert!(!p.matches("xtest-progress-1"));
        let p = Pattern::new("a*b*c");
        assert!(p.matches("abc") && p.matches("a-b-c") && !p.matches("a-c"));
        assert!(Pattern::new("exact").matches("exact") && !Pattern::new("exact").matches("exact2"));
    }

    #[test]
    fn clients_join_only_what_policy_and_token_allow() {
        let granted = vec!["user_1".to_string(), "role_admin".to_string()];
        let p = policy();
        assert_eq!(p.may_join("queue-updates", &granted), Ok(()));
        assert_eq!(p.may_join("user_1", &granted), Ok(()));
        assert_eq!(p.may_join("user_2", &granted), Err(JoinRefusal::NotGranted));
        assert_eq!(p.may_join("role_staff", &granted), Err(JoinRefusal::NotGranted));
        assert_eq!(p.may_join("project_9", &granted), Err(JoinRefusal::NotGranted));
        assert_eq!(p.may_join("random", &granted), Err(JoinRefusal::NotJoinable));
        assert_eq!(p.may_join("", &granted), Err(JoinRefusal::Empty));
        assert_eq!(p.may_join(&"x".repeat(10_000), &granted), Err(JoinRefusal::TooLong(200)));
        assert_eq!(p.may_join("test-progress-\u{0}", &granted), Err(JoinRefusal::ControlCharacters));
    }
}
