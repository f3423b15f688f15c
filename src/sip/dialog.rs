//! The UAS side of a dialog (RFC 3261 §12): what an INVITE we answered fixes about the
//! requests that follow, in both directions.

use bytes::Bytes;

use crate::sip::message::{Headers, Method, NameAddr, Request};
use crate::sip::transport::Target;
use crate::sip::uri::{Scheme, Uri};

/// Identifies a dialog on our side: the SIP Call-ID and the tag we chose.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogKey {
    pub call_id: String,
    pub local_tag: String,
}

impl DialogKey {
    /// The dialog a request from the peer belongs to (our tag is in its To).
    pub fn of_request(req: &Request) -> Option<DialogKey> {
        Some(DialogKey {
            call_id: req.call_id()?.to_string(),
            local_tag: req.to_tag()?,
        })
    }
}

/// A dialog created by an INVITE we answer.
#[derive(Debug, Clone)]
pub struct Dialog {
    pub key: DialogKey,
    /// The INVITE's To, without tag: our identity in the dialog.
    local: String,
    /// The INVITE's From, with its tag: the peer's identity.
    remote: String,
    /// The peer's Contact URI: the Request-URI of our requests.
    pub remote_target: String,
    /// Record-Route values, in order (a UAS keeps them as received, §12.1.1).
    route_set: Vec<String>,
    local_cseq: u32,
    /// The last CSeq the peer used, to spot stale or out-of-order requests (§12.2.2).
    pub remote_cseq: u32,
    /// Where the INVITE came from. Requests go back along this flow (connection or
    /// address), as RFC 5626 does: trunks and phones behind NAT are reachable only there.
    pub flow: Target,
    /// RFC 3261 §12.1: the INVITE went over TLS to a `sips:` Request-URI, so our Contact
    /// must be `sips:` too.
    pub secure: bool,
}

/// Why an INVITE cannot make a dialog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    #[error("INVITE has no Call-ID")]
    CallId,
    #[error("INVITE has no From tag")]
    FromTag,
    #[error("INVITE has no usable Contact")]
    Contact,
    #[error("INVITE has no To")]
    To,
    #[error("INVITE has no CSeq")]
    CSeq,
}

fn is_secure(invite: &Request, flow: Target) -> bool {
    flow.kind == crate::sip::transport::Kind::Tls
        && Uri::parse(&invite.uri).is_ok_and(|uri| uri.scheme == Scheme::Sips)
}

impl Dialog {
    /// The dialog our 2xx (or a provisional with a tag) to `invite` establishes.
    pub fn from_invite(
        invite: &Request,
        local_tag: &str,
        flow: Target,
    ) -> Result<Dialog, DialogError> {
        let call_id = invite.call_id().ok_or(DialogError::CallId)?.to_string();
        invite.from_tag().ok_or(DialogError::FromTag)?;
        let remote = invite
            .headers
            .get("From")
            .ok_or(DialogError::FromTag)?
            .to_string();
        let local = invite.headers.get("To").ok_or(DialogError::To)?.to_string();
        let contact = invite
            .headers
            .get("Contact")
            .and_then(|c| NameAddr::parse(c).ok())
            .ok_or(DialogError::Contact)?;
        let route_set = invite
            .headers
            .get_all("Record-Route")
            .into_iter()
            .map(|r| r.trim().to_string())
            .collect();
        let remote_cseq = invite.cseq().ok_or(DialogError::CSeq)?.seq;
        Ok(Dialog {
            key: DialogKey {
                call_id,
                local_tag: local_tag.to_string(),
            },
            local,
            remote,
            remote_target: contact.uri,
            route_set,
            // Our own CSeq space starts anywhere (§8.1.1.5); a small random start is common.
            local_cseq: rand::random::<u16>() as u32 + 1,
            remote_cseq,
            secure: is_secure(invite, flow),
            flow,
        })
    }

    /// The dialog a 2xx to our own INVITE establishes (RFC 3261 §12.1.2): our From and its
    /// tag, the answerer's To with its tag, its Contact as the remote target, and the
    /// Record-Route set in reverse.
    pub fn from_response(
        invite: &Request,
        resp: &crate::sip::message::Response,
        flow: Target,
    ) -> Result<Dialog, DialogError> {
        let call_id = invite.call_id().ok_or(DialogError::CallId)?.to_string();
        let local_tag = invite.from_tag().ok_or(DialogError::FromTag)?;
        let from = invite.headers.get("From").ok_or(DialogError::FromTag)?;
        let local = from.replace(&format!(";tag={local_tag}"), "");
        let remote = resp.headers.get("To").ok_or(DialogError::To)?.to_string();
        let contact = resp
            .headers
            .get("Contact")
            .and_then(|c| NameAddr::parse(c).ok())
            .ok_or(DialogError::Contact)?;
        let mut route_set: Vec<String> = resp
            .headers
            .get_all("Record-Route")
            .into_iter()
            .map(|r| r.trim().to_string())
            .collect();
        route_set.reverse();
        let local_cseq = invite.cseq().ok_or(DialogError::CSeq)?.seq;
        Ok(Dialog {
            key: DialogKey { call_id, local_tag },
            local,
            remote,
            remote_target: contact.uri,
            route_set,
            local_cseq,
            remote_cseq: 0,
            secure: is_secure(invite, flow),
            flow,
        })
    }

    /// The ACK of a 2xx to our INVITE (RFC 3261 §13.2.2.4): the INVITE's CSeq number, sent
    /// to the remote target; the endpoint adds a fresh Via.
    pub fn ack(&self, invite_cseq: u32) -> Request {
        Request {
            method: Method::Ack,
            uri: self.remote_target.clone(),
            headers: self.headers(invite_cseq, &Method::Ack),
            body: Bytes::new(),
        }
    }

    /// What every request in the dialog carries (§12.2.1.1): the route set, our From with
    /// its tag, their To with theirs, the Call-ID, the CSeq and Max-Forwards.
    fn headers(&self, cseq: u32, method: &Method) -> Headers {
        let mut headers = Headers::default();
        for route in &self.route_set {
            headers.push("Route", route.as_str());
        }
        headers.push("From", format!("{};tag={}", self.local, self.key.local_tag));
        headers.push("To", self.remote.as_str());
        headers.push("Call-ID", self.key.call_id.as_str());
        headers.push("CSeq", format!("{cseq} {}", method.as_str()));
        headers.push("Max-Forwards", "70");
        headers
    }

    /// A new request inside the dialog (BYE, re-INVITE, INFO, ...), without Via: the
    /// endpoint adds its own when it sends.
    pub fn request(
        &mut self,
        method: Method,
        contact: &str,
        body: Option<(&str, Bytes)>,
    ) -> Request {
        self.local_cseq = self.local_cseq.wrapping_add(1).max(1);
        let mut headers = self.headers(self.local_cseq, &method);
        if matches!(method, Method::Invite | Method::Update) {
            headers.push("Contact", contact);
        }
        let body = match body {
            Some((content_type, bytes)) => {
                headers.push("Content-Type", content_type);
                bytes
            }
            None => Bytes::new(),
        };
        Request {
            method,
            uri: self.remote_target.clone(),
            headers,
            body,
        }
    }

    /// Checks a request from the peer against the dialog's CSeq order (§12.2.2): lower
    /// than the last is out of order (500). Records it otherwise.
    pub fn accept_remote_cseq(&mut self, cseq: u32) -> bool {
        if cseq < self.remote_cseq {
            return false;
        }
        self.remote_cseq = cseq;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{parse, Limits, SipMessage};
    use crate::sip::transport::Kind;

    const INVITE: &str = "INVITE sip:abc@dialtone.example SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx\r\n\
Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\r\n\
From: \"Alice\" <sip:+14155550100@trunk.example>;tag=from1\r\n\
To: <sip:abc@dialtone.example>\r\n\
Call-ID: c1@trunk\r\n\
CSeq: 10 INVITE\r\n\
Contact: <sip:alice@192.0.2.1:5060;transport=udp>\r\n\
Content-Length: 0\r\n\r\n";

    fn invite() -> Request {
        let limits = Limits {
            max_message_bytes: 65535,
            max_headers: 100,
        };
        match parse(INVITE.as_bytes(), &limits).unwrap() {
            SipMessage::Request(r) => r,
            SipMessage::Response(_) => unreachable!(),
        }
    }

    fn flow() -> Target {
        Target {
            kind: Kind::Udp,
            addr: "192.0.2.1:5060".parse().unwrap(),
            conn: None,
        }
    }

    #[test]
    fn bye_carries_the_dialog_identifiers() {
        let mut d = Dialog::from_invite(&invite(), "ours", flow()).unwrap();
        let bye = d.request(Method::Bye, "<sip:me@198.51.100.1>", None);
        assert_eq!(bye.uri, "sip:alice@192.0.2.1:5060;transport=udp");
        assert_eq!(
            bye.headers.get("From"),
            Some("<sip:abc@dialtone.example>;tag=ours")
        );
        assert_eq!(
            bye.headers.get("To"),
            Some("\"Alice\" <sip:+14155550100@trunk.example>;tag=from1")
        );
        assert_eq!(bye.headers.get("Call-ID"), Some("c1@trunk"));
        assert_eq!(
            bye.headers.get_all("Route"),
            vec!["<sip:p1.example;lr>", "<sip:p2.example;lr>"]
        );
        assert!(bye.headers.get("Contact").is_none());
        let first = bye.cseq().unwrap().seq;
        let again = d.request(Method::Bye, "", None);
        assert_eq!(again.cseq().unwrap().seq, first + 1);
    }

    #[test]
    fn secure_only_for_sips_over_tls() {
        let tls = Target {
            kind: Kind::Tls,
            ..flow()
        };
        assert!(!Dialog::from_invite(&invite(), "t", flow()).unwrap().secure);
        assert!(!Dialog::from_invite(&invite(), "t", tls).unwrap().secure);
        let mut sips = invite();
        sips.uri = "SIPS:abc@dialtone.example".to_string();
        assert!(Dialog::from_invite(&sips, "t", tls).unwrap().secure);
        assert!(!Dialog::from_invite(&sips, "t", flow()).unwrap().secure);
    }

    #[test]
    fn remote_cseq_must_not_go_backwards() {
        let mut d = Dialog::from_invite(&invite(), "ours", flow()).unwrap();
        assert!(!d.accept_remote_cseq(9));
        assert!(d.accept_remote_cseq(11));
        assert!(!d.accept_remote_cseq(10));
    }

    #[test]
    fn invite_without_contact_makes_no_dialog() {
        let mut req = invite();
        req.headers.remove("Contact");
        assert_eq!(
            Dialog::from_invite(&req, "t", flow()).unwrap_err(),
            DialogError::Contact
        );
    }

    #[test]
    fn key_of_an_in_dialog_request() {
        let mut req = invite();
        req.headers.set("To", "<sip:abc@dialtone.example>;tag=ours");
        assert_eq!(
            DialogKey::of_request(&req),
            Some(DialogKey {
                call_id: "c1@trunk".into(),
                local_tag: "ours".into()
            })
        );
    }
}
