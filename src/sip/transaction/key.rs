//! Transaction matching keys (RFC 3261 §17.1.3, §17.2.3).
//!
//! The endpoint keeps a map from key to live machine. Keys are built from borrowed header
//! values so this module does not depend on the message types.
//!
//! - A **response** finds its client transaction by [`ClientKey`]: the top Via branch plus
//!   the CSeq method (so a CANCEL, which shares the INVITE's branch, has its own).
//! - A **request** finds its server transaction by [`ServerKey`]. With an RFC 3261 branch
//!   (magic cookie `z9hG4bK`) that is branch, sent-by and method, where ACK counts as
//!   INVITE: the ACK of a non-2xx joins the INVITE's transaction. The ACK of a 2xx carries a
//!   new branch, finds nothing, and goes to the TU (it is its own transaction). Without the
//!   cookie (RFC 2543 peers) the key falls back to Request-URI, From tag, Call-ID, CSeq
//!   number, the raw top Via and the method (ACK again as INVITE), plus the To tag for
//!   methods other than INVITE and ACK.
//! - A **CANCEL** gets a server transaction of its own (it is answered with its own 200)
//!   and names the INVITE it cancels through [`ServerKey::cancel_target`] (§9.2: the
//!   INVITE's key is the CANCEL's with the method taken as INVITE).
//!
//! Comparison follows RFC 3261 §7.3.1: branch, host and tags are tokens and compare
//! case-insensitively (they are lowercased here); methods and Call-ID are case-sensitive.

/// The prefix of an RFC 3261 branch parameter (§8.1.1.7).
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// Whether a branch was made by an RFC 3261 element, so it alone identifies a transaction.
pub fn is_rfc3261_branch(branch: &str) -> bool {
    branch.starts_with(MAGIC_COOKIE)
}

/// The header values that identify a request's server transaction, borrowed from the
/// parsed message. Fields used only by the RFC 2543 fallback may be left empty when the
/// branch carries the magic cookie.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIds<'a> {
    /// The request method (same as the CSeq method for a valid request).
    pub method: &'a str,
    /// The top Via's branch parameter, if any.
    pub branch: Option<&'a str>,
    /// The top Via's sent-by, `host[:port]` as written.
    pub sent_by: &'a str,
    /// RFC 2543 fallback: the Request-URI as written.
    pub request_uri: &'a str,
    /// RFC 2543 fallback: the From tag.
    pub from_tag: Option<&'a str>,
    /// RFC 2543 fallback: the To tag (ignored for INVITE and ACK, see [`ServerKey`]).
    pub to_tag: Option<&'a str>,
    /// RFC 2543 fallback: the Call-ID.
    pub call_id: &'a str,
    /// RFC 2543 fallback: the CSeq sequence number.
    pub cseq: u32,
    /// RFC 2543 fallback: the raw value of the top Via header field.
    pub top_via: &'a str,
}

/// The key of a server transaction. Build it with [`ServerKey::from_request`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerKey(ServerKeyKind);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ServerKeyKind {
    Rfc3261 {
        branch: String,
        sent_by: String,
        method: String,
    },
    /// The To tag is not part of an INVITE's key: the ACK of a non-2xx carries the tag the
    /// server chose in its response, which the INVITE did not have. The endpoint checks an
    /// RFC 2543 ACK's To tag against the tag it sent (§17.2.3), if it cares to.
    Rfc2543 {
        request_uri: String,
        from_tag: String,
        to_tag: Option<String>,
        call_id: String,
        cseq: u32,
        top_via: String,
        method: String,
    },
}

/// ACK belongs to the INVITE's transaction; every other method keys as itself.
fn transaction_method(method: &str) -> &str {
    if method == "ACK" {
        "INVITE"
    } else {
        method
    }
}

fn token(value: &str) -> String {
    value.trim().to_ascii_lowercase()
}

impl ServerKey {
    /// The key a request belongs to: RFC 3261 matching when its branch has the magic
    /// cookie, the RFC 2543 fallback otherwise.
    pub fn from_request(ids: &RequestIds<'_>) -> ServerKey {
        let method = transaction_method(ids.method.trim()).to_owned();
        match ids.branch.map(str::trim).filter(|b| is_rfc3261_branch(b)) {
            Some(branch) => ServerKey(ServerKeyKind::Rfc3261 {
                branch: token(branch),
                sent_by: token(ids.sent_by),
                method,
            }),
            None => {
                let to_tag = match method.as_str() {
                    "INVITE" => None,
                    _ => ids.to_tag.map(token),
                };
                ServerKey(ServerKeyKind::Rfc2543 {
                    request_uri: ids.request_uri.trim().to_owned(),
                    from_tag: ids.from_tag.map(token).unwrap_or_default(),
                    to_tag,
                    call_id: ids.call_id.trim().to_owned(),
                    cseq: ids.cseq,
                    top_via: ids.top_via.trim().to_owned(),
                    method,
                })
            }
        }
    }

    /// The method the transaction was created for (INVITE for an ACK's key).
    pub fn method(&self) -> &str {
        match &self.0 {
            ServerKeyKind::Rfc3261 { method, .. } | ServerKeyKind::Rfc2543 { method, .. } => method,
        }
    }

    /// True when the key uses the RFC 2543 fallback (the peer sent no magic cookie).
    pub fn is_rfc2543(&self) -> bool {
        matches!(self.0, ServerKeyKind::Rfc2543 { .. })
    }

    /// For a CANCEL's key, the key of the INVITE server transaction it targets (RFC 3261
    /// §9.2: match as if the CANCEL's method were the cancelled request's). `None` for any
    /// other method. The endpoint looks the INVITE up with it: found and not yet final, it
    /// answers the CANCEL 200 and the INVITE 487; not found, it answers the CANCEL 481.
    pub fn cancel_target(&self) -> Option<ServerKey> {
        if self.method() != "CANCEL" {
            return None;
        }
        let mut target = self.clone();
        match &mut target.0 {
            ServerKeyKind::Rfc3261 { method, .. } => *method = "INVITE".to_owned(),
            ServerKeyKind::Rfc2543 { method, to_tag, .. } => {
                *method = "INVITE".to_owned();
                *to_tag = None;
            }
        }
        Some(target)
    }
}

/// The key of a client transaction (§17.1.3): our own branch and the CSeq method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    branch: String,
    method: String,
}

impl ClientKey {
    /// From the top Via branch and CSeq method: of the request when creating the
    /// transaction, of the response when matching one.
    pub fn new(branch: &str, cseq_method: &str) -> ClientKey {
        ClientKey {
            branch: token(branch),
            method: cseq_method.trim().to_owned(),
        }
    }

    /// The key of the CANCEL for this transaction: a CANCEL reuses the branch of the
    /// request it cancels (§9.1) but is a transaction of its own.
    pub fn for_cancel(&self) -> ClientKey {
        ClientKey {
            branch: self.branch.clone(),
            method: "CANCEL".to_owned(),
        }
    }

    pub fn branch(&self) -> &str {
        &self.branch
    }

    pub fn method(&self) -> &str {
        &self.method
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc3261(method: &'static str) -> RequestIds<'static> {
        RequestIds {
            method,
            branch: Some("z9hG4bK776asdhds"),
            sent_by: "pc33.atlanta.com:5060",
            // The fallback fields differ per request in real life; they must not matter.
            request_uri: "sip:bob@biloxi.com",
            to_tag: (method == "ACK").then_some("a6c85cf"),
            call_id: "a84b4c76e66710",
            cseq: 314159,
            ..RequestIds::default()
        }
    }

    fn rfc2543(method: &'static str, to_tag: Option<&'static str>) -> RequestIds<'static> {
        RequestIds {
            method,
            branch: None,
            sent_by: "pc33.atlanta.com",
            request_uri: "sip:bob@biloxi.com",
            from_tag: Some("1928301774"),
            to_tag,
            call_id: "a84b4c76e66710",
            cseq: 314159,
            top_via: "SIP/2.0/UDP pc33.atlanta.com",
        }
    }

    #[test]
    fn magic_cookie_is_case_sensitive() {
        assert!(is_rfc3261_branch("z9hG4bK776asdhds"));
        assert!(!is_rfc3261_branch("z9hg4bk776asdhds"));
        assert!(!is_rfc3261_branch("776asdhds"));
    }

    #[test]
    fn ack_joins_the_invite_and_cancel_keeps_its_own() {
        let invite = ServerKey::from_request(&rfc3261("INVITE"));
        let ack = ServerKey::from_request(&rfc3261("ACK"));
        let cancel = ServerKey::from_request(&rfc3261("CANCEL"));
        assert!(!invite.is_rfc2543());
        assert_eq!(ack, invite);
        assert_eq!(ack.method(), "INVITE");
        assert_ne!(cancel, invite);
        assert_eq!(cancel.cancel_target(), Some(invite.clone()));
        assert_eq!(invite.cancel_target(), None);
    }

    #[test]
    fn branch_and_host_compare_case_insensitively_method_does_not() {
        let invite = ServerKey::from_request(&rfc3261("INVITE"));
        let shouted = ServerKey::from_request(&RequestIds {
            branch: Some("z9hG4bK776ASDHDS"),
            sent_by: "PC33.Atlanta.com:5060",
            ..rfc3261("INVITE")
        });
        assert_eq!(shouted, invite);
        let lower_method = ServerKey::from_request(&rfc3261("invite"));
        assert_ne!(lower_method, invite);
    }

    #[test]
    fn same_branch_from_another_sender_is_another_transaction() {
        let invite = ServerKey::from_request(&rfc3261("INVITE"));
        let other = ServerKey::from_request(&RequestIds {
            sent_by: "evil.example.com:5060",
            ..rfc3261("INVITE")
        });
        assert_ne!(other, invite);
        let other_method = ServerKey::from_request(&rfc3261("BYE"));
        assert_ne!(other_method, invite);
    }

    #[test]
    fn rfc2543_ack_matches_invite_despite_the_new_to_tag() {
        let invite = ServerKey::from_request(&rfc2543("INVITE", None));
        let ack = ServerKey::from_request(&rfc2543("ACK", Some("server-tag")));
        assert!(invite.is_rfc2543());
        assert_eq!(ack, invite);
        let other_cseq = ServerKey::from_request(&RequestIds {
            cseq: 314160,
            ..rfc2543("ACK", Some("server-tag"))
        });
        assert_ne!(other_cseq, invite);
        let other_via = ServerKey::from_request(&RequestIds {
            top_via: "SIP/2.0/UDP pc33.atlanta.com;received=192.0.2.1",
            ..rfc2543("INVITE", None)
        });
        assert_ne!(other_via, invite);
    }

    #[test]
    fn rfc2543_non_invite_keys_include_the_to_tag() {
        let bye = ServerKey::from_request(&rfc2543("BYE", Some("t1")));
        assert_eq!(bye, ServerKey::from_request(&rfc2543("BYE", Some("T1"))));
        assert_ne!(bye, ServerKey::from_request(&rfc2543("BYE", Some("t2"))));
    }

    #[test]
    fn rfc2543_cancel_targets_the_invite() {
        let invite = ServerKey::from_request(&rfc2543("INVITE", None));
        let cancel = ServerKey::from_request(&rfc2543("CANCEL", None));
        assert_ne!(cancel, invite);
        assert_eq!(cancel.cancel_target(), Some(invite.clone()));
        // A re-INVITE carries a To tag; its CANCEL carries the same one.
        let reinvite = ServerKey::from_request(&rfc2543("INVITE", Some("t")));
        let recancel = ServerKey::from_request(&rfc2543("CANCEL", Some("t")));
        assert_eq!(recancel.cancel_target(), Some(reinvite));
    }

    #[test]
    fn branch_without_cookie_falls_back() {
        let key = ServerKey::from_request(&RequestIds {
            branch: Some("776asdhds"),
            ..rfc2543("OPTIONS", None)
        });
        assert!(key.is_rfc2543());
    }

    #[test]
    fn client_keys_split_invite_and_cancel_on_one_branch() {
        let invite = ClientKey::new("z9hG4bKnashds8", "INVITE");
        assert_eq!(invite, ClientKey::new("z9hG4bKNASHDS8", "INVITE"));
        let cancel = invite.for_cancel();
        assert_ne!(cancel, invite);
        assert_eq!(cancel, ClientKey::new("z9hG4bKnashds8", "CANCEL"));
        assert_eq!(cancel.branch(), invite.branch());
        assert_eq!(cancel.method(), "CANCEL");
    }
}
