//! [`Sdp`] back to text. Lines we parsed but do not interpret are written back as they
//! came, so a description survives a parse/write round trip.

use std::fmt;
use std::net::IpAddr;

use super::*;

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V4(a) => write!(f, "IN IP4 {a}"),
            IpAddr::V6(a) => write!(f, "IN IP6 {a}"),
        }
    }
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "a={}:{}\r\n", self.name, v),
            None => write!(f, "a={}\r\n", self.name),
        }
    }
}

/// Serialises with CRLF line ends in RFC 8866 order.
impl fmt::Display for Sdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.origin;
        f.write_str("v=0\r\n")?;
        write!(
            f,
            "o={} {} {} {} {} {}\r\n",
            o.username, o.session_id, o.session_version, o.net_type, o.addr_type, o.address
        )?;
        write!(f, "s={}\r\n", self.session_name)?;
        write_other_lines(f, &self.other_lines, &['i', 'u', 'e', 'p'])?;
        if let Some(c) = &self.connection {
            write!(f, "c={c}\r\n")?;
        }
        for b in &self.bandwidths {
            write!(f, "b={b}\r\n")?;
        }
        write!(f, "t={} {}\r\n", self.timing.0, self.timing.1)?;
        write_other_lines(f, &self.other_lines, &['r', 'z', 'k'])?;
        if let Some(d) = self.direction {
            write!(f, "a={}\r\n", d.as_str())?;
        }
        for a in &self.attributes {
            write!(f, "{a}")?;
        }
        for m in &self.media {
            write!(f, "{m}")?;
        }
        Ok(())
    }
}

fn write_other_lines(
    f: &mut fmt::Formatter<'_>,
    lines: &[(char, String)],
    kinds: &[char],
) -> fmt::Result {
    for (kind, value) in lines.iter().filter(|(k, _)| kinds.contains(k)) {
        write!(f, "{kind}={value}\r\n")?;
    }
    Ok(())
}

impl fmt::Display for MediaSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m={} {}", self.media, self.port)?;
        if let Some(n) = self.port_count {
            write!(f, "/{n}")?;
        }
        write!(f, " {}", self.protocol.as_str())?;
        for fmt in &self.formats {
            write!(f, " {fmt}")?;
        }
        f.write_str("\r\n")?;
        write_other_lines(f, &self.other_lines, &['i'])?;
        if let Some(c) = &self.connection {
            write!(f, "c={c}\r\n")?;
        }
        for b in &self.bandwidths {
            write!(f, "b={b}\r\n")?;
        }
        write_other_lines(f, &self.other_lines, &['k'])?;
        for r in &self.rtpmaps {
            write!(
                f,
                "a=rtpmap:{} {}/{}",
                r.payload_type, r.encoding, r.clock_rate
            )?;
            if let Some(ch) = r.channels {
                write!(f, "/{ch}")?;
            }
            f.write_str("\r\n")?;
        }
        for p in &self.fmtps {
            write!(f, "a=fmtp:{} {}\r\n", p.format, p.params)?;
        }
        if let Some(p) = self.ptime {
            write!(f, "a=ptime:{p}\r\n")?;
        }
        if let Some(p) = self.maxptime {
            write!(f, "a=maxptime:{p}\r\n")?;
        }
        if let Some(r) = &self.rtcp {
            write!(f, "a=rtcp:{}", r.port)?;
            if let Some(c) = &r.connection {
                write!(f, " {c}")?;
            }
            f.write_str("\r\n")?;
        }
        if self.rtcp_mux {
            f.write_str("a=rtcp-mux\r\n")?;
        }
        for c in &self.crypto {
            write!(f, "a=crypto:{} {} {}", c.tag, c.suite, c.key_params)?;
            for p in &c.session_params {
                write!(f, " {p}")?;
            }
            f.write_str("\r\n")?;
        }
        if let Some(d) = self.direction {
            write!(f, "a={}\r\n", d.as_str())?;
        }
        for a in &self.attributes {
            write!(f, "{a}")?;
        }
        Ok(())
    }
}
