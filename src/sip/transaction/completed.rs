//! Finished non-INVITE server transactions over UDP, kept only to answer retransmissions.
//!
//! RFC 3261 §17.2.2 keeps such a transaction in Completed for Timer J (64·T1, 32 s by
//! default), resending its final response to every retransmitted request. That wait is
//! all it still does, so instead of a task, a channel and a state machine per transaction
//! for those 32 s, the endpoint keeps one entry here: the key, the response bytes and
//! where they go, about a tenth of the memory. Entries expire in insertion order (every
//! one waits the same Timer J), so a queue finds the expired ones without scanning.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use super::key::ServerKey;
use crate::sip::transport::Target;

/// What a retransmission of a finished request gets.
#[derive(Debug, Clone)]
pub struct Finished {
    pub response: Bytes,
    pub target: Target,
}

#[derive(Debug)]
struct Entry {
    finished: Finished,
    expires: Instant,
}

/// The table: lookups by key, expiry in insertion order.
#[derive(Debug, Default)]
pub struct CompletedTable {
    entries: HashMap<ServerKey, Entry>,
    /// (expiry, key) in insertion order; expiries never decrease.
    order: VecDeque<(Instant, ServerKey)>,
}

impl CompletedTable {
    /// Keeps `finished` for `key` until `expires`, and forgets what expired by `now`.
    pub fn insert(&mut self, key: ServerKey, finished: Finished, expires: Instant, now: Instant) {
        self.expire(now);
        self.order.push_back((expires, key.clone()));
        self.entries.insert(key, Entry { finished, expires });
    }

    /// The response to resend for a retransmission of `key`, unless it expired.
    pub fn get(&self, key: &ServerKey, now: Instant) -> Option<Finished> {
        self.entries
            .get(key)
            .filter(|e| e.expires > now)
            .map(|e| e.finished.clone())
    }

    /// Drops the entries whose Timer J fired by `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some((expires, _)) = self.order.front() {
            if *expires > now {
                break;
            }
            if let Some((expires, key)) = self.order.pop_front() {
                // A key can come back (a new request reusing a branch after expiry): only
                // remove the entry this queue slot was for.
                if self.entries.get(&key).is_some_and(|e| e.expires == expires) {
                    self.entries.remove(&key);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::transaction::key::RequestIds;
    use crate::sip::transport::Kind;
    use std::time::Duration;

    fn key(branch: &str) -> ServerKey {
        ServerKey::from_request(&RequestIds {
            method: "OPTIONS",
            branch: Some(branch),
            sent_by: "192.0.2.1:5060",
            request_uri: "sip:x@example.com",
            from_tag: Some("f"),
            to_tag: None,
            call_id: "c",
            cseq: 1,
            top_via: "SIP/2.0/UDP 192.0.2.1:5060",
        })
    }

    fn finished(body: &'static str) -> Finished {
        Finished {
            response: Bytes::from_static(body.as_bytes()),
            target: Target {
                kind: Kind::Udp,
                addr: "192.0.2.1:5060".parse().unwrap(),
                conn: None,
            },
        }
    }

    #[test]
    fn answers_until_timer_j_then_forgets() {
        let t0 = Instant::now();
        let j = Duration::from_secs(32);
        let mut table = CompletedTable::default();
        table.insert(key("z9hG4bKa"), finished("a"), t0 + j, t0);
        table.insert(
            key("z9hG4bKb"),
            finished("b"),
            t0 + j + Duration::from_secs(1),
            t0 + Duration::from_secs(1),
        );
        let got = table.get(&key("z9hG4bKa"), t0 + Duration::from_secs(31));
        assert_eq!(got.unwrap().response, Bytes::from_static(b"a"));
        assert!(table.get(&key("z9hG4bKa"), t0 + j).is_none());
        assert!(table.get(&key("z9hG4bKc"), t0).is_none());
        table.expire(t0 + j);
        assert_eq!(table.len(), 1);
        table.expire(t0 + j + Duration::from_secs(1));
        assert!(table.is_empty());
    }

    #[test]
    fn a_key_reused_after_expiry_keeps_its_new_entry() {
        let t0 = Instant::now();
        let j = Duration::from_secs(32);
        let mut table = CompletedTable::default();
        table.insert(key("z9hG4bKa"), finished("old"), t0 + j, t0);
        // Re-inserted before the old slot was swept (no insert in between).
        table.insert(key("z9hG4bKa"), finished("new"), t0 + j * 2, t0 + j);
        table.expire(t0 + j + Duration::from_secs(1));
        let got = table.get(&key("z9hG4bKa"), t0 + j + Duration::from_secs(1));
        assert_eq!(got.unwrap().response, Bytes::from_static(b"new"));
    }
}
