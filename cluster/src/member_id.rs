//! The identity an instance announces to the cluster.
//!
//! A readable part (the hostname, or a name the operator gives) tells people
//! which pod holds a shard; a fresh UUID per process makes the id unique even
//! when two instances share a hostname or a pod restarts under the same name.
//! A restarted process is therefore a new member: its predecessor's leases are
//! never mistaken for its own.

use std::fmt;

/// A unique member id: `<name>-<uuid>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId(String);

impl MemberId {
    /// A new id for this process, named `name` (spaces and control characters
    /// become `_` so the id stays one token in logs and channel payloads).
    pub fn generate(name: &str) -> Self {
        let name: String = name
            .trim()
            .chars()
            .map(|c| {
                if c.is_whitespace() || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        let name = if name.is_empty() {
            "redtail".to_string()
        } else {
            name
        };
        Self(format!("{name}-{}", uuid::Uuid::new_v4().simple()))
    }

    /// A new id named after this host (`HOSTNAME`, else the kernel's
    /// hostname, else `redtail`): in Kubernetes, the pod name.
    pub fn for_this_host() -> Self {
        let name = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.trim().is_empty())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .unwrap_or_default();
        Self::generate(&name)
    }

    /// An id read back from Redis; `None` when empty.
    pub fn from_stored(text: &str) -> Option<Self> {
        (!text.is_empty()).then(|| Self(text.to_string()))
    }

    /// The id as stored in Redis.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kept_readable_and_ids_unique() {
        let cases = [
            ("pod-7", "pod-7-"),
            ("  my host\n", "my_host-"),
            ("", "redtail-"),
            ("a\tb", "a_b-"),
        ];
        for (name, starts) in cases {
            let a = MemberId::generate(name);
            let b = MemberId::generate(name);
            assert!(a.as_str().starts_with(starts), "{a}");
            assert_eq!(a.as_str().len(), starts.len() + 32);
            assert_ne!(a, b);
        }
    }

    #[test]
    fn stored_ids_round_trip() {
        assert_eq!(MemberId::from_stored(""), None);
        assert_eq!(MemberId::from_stored("x-1").unwrap().to_string(), "x-1");
    }
}
