//! A minimal DHCPv4 client (RFC 2131/2132): DISCOVER → OFFER → REQUEST → ACK.
//!
//! The packet encoding and decoding are pure functions; [`obtain_lease`] does
//! the exchange over a UDP socket bound to `0.0.0.0:68` on the interface
//! (`SO_BINDTODEVICE`), sending to `255.255.255.255:67` with the broadcast
//! flag set so that servers answer by broadcast, which the kernel delivers to
//! the socket even though the interface has no address yet.

use std::ffi::c_void;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::{netmask_to_prefix, Lease, NetError};

pub(super) const SERVER_PORT: u16 = 67;
pub(super) const CLIENT_PORT: u16 = 68;

const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
const HTYPE_ETHER: u8 = 1;
const FLAG_BROADCAST: u16 = 0x8000;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// op .. file: the fixed BOOTP header.
const HEADER_LEN: usize = 236;
/// BOOTP relays and some servers drop requests shorter than this.
const MIN_PACKET_LEN: usize = 300;

const OPT_PAD: u8 = 0;
const OPT_SUBNET_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_HOSTNAME: u8 = 12;
const OPT_DOMAIN_NAME: u8 = 15;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_LEASE_TIME: u8 = 51;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PARAMETER_LIST: u8 = 55;
const OPT_MESSAGE: u8 = 56;
const OPT_CLIENT_ID: u8 = 61;
const OPT_END: u8 = 255;

/// What we ask servers for (option 55).
const PARAMETERS: [u8; 6] = [
    OPT_SUBNET_MASK,
    OPT_ROUTER,
    OPT_DNS,
    OPT_DOMAIN_NAME,
    OPT_LEASE_TIME,
    OPT_SERVER_ID,
];

/// First retransmission interval; doubled after each try up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    fn from_u8(v: u8) -> Option<MessageType> {
        Some(match v {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            _ => return None,
        })
    }
}

/// Why a received packet is not a usable DHCP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum ParseError {
    #[error("packet too short ({0} bytes)")]
    Short(usize),
    #[error("not a BOOTREPLY (op {0})")]
    NotReply(u8),
    #[error("hardware type {htype}/length {hlen} is not Ethernet")]
    NotEthernet { htype: u8, hlen: u8 },
    #[error("bad magic cookie")]
    BadCookie,
    #[error("option {0} runs past the end of the packet")]
    Truncated(u8),
    #[error("option {code} has invalid length {len}")]
    BadLength { code: u8, len: usize },
    #[error("no DHCP message type")]
    NoMessageType,
    #[error("unknown DHCP message type {0}")]
    BadMessageType(u8),
}

/// The parts of a server reply the client uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reply {
    pub(super) msg_type: MessageType,
    pub(super) xid: u32,
    pub(super) chaddr: [u8; 16],
    pub(super) yiaddr: Ipv4Addr,
    pub(super) server_id: Option<Ipv4Addr>,
    pub(super) subnet_mask: Option<Ipv4Addr>,
    pub(super) routers: Vec<Ipv4Addr>,
    pub(super) dns: Vec<Ipv4Addr>,
    pub(super) domain: Option<String>,
    pub(super) lease_secs: Option<u32>,
    /// Option 56, the server's explanation (mostly on NAK).
    pub(super) message: Option<String>,
}

impl Reply {
    /// Whether this reply answers our transaction `xid` from `mac`.
    pub(super) fn is_for(&self, xid: u32, mac: &[u8; 6]) -> bool {
        self.xid == xid && self.chaddr[..6] == mac[..]
    }
}

/// DHCPDISCOVER, broadcast flag set.
pub(super) fn encode_discover(xid: u32, mac: &[u8; 6], secs: u16, hostname: &str) -> Vec<u8> {
    encode(MessageType::Discover, xid, mac, secs, hostname, &[])
}

/// DHCPREQUEST in SELECTING state: `requested` is the offered address and
/// `server` the offering server's identifier.
pub(super) fn encode_request(
    xid: u32,
    mac: &[u8; 6],
    secs: u16,
    hostname: &str,
    requested: Ipv4Addr,
    server: Ipv4Addr,
) -> Vec<u8> {
    encode(
        MessageType::Request,
        xid,
        mac,
        secs,
        hostname,
        &[
            (OPT_REQUESTED_IP, &requested.octets()),
            (OPT_SERVER_ID, &server.octets()),
        ],
    )
}

fn encode(
    msg: MessageType,
    xid: u32,
    mac: &[u8; 6],
    secs: u16,
    hostname: &str,
    extra: &[(u8, &[u8])],
) -> Vec<u8> {
    let mut p = Vec::with_capacity(MIN_PACKET_LEN + 64);
    p.extend_from_slice(&[BOOTREQUEST, HTYPE_ETHER, 6, 0]);
    p.extend_from_slice(&xid.to_be_bytes());
    p.extend_from_slice(&secs.to_be_bytes());
    p.extend_from_slice(&FLAG_BROADCAST.to_be_bytes());
    p.extend_from_slice(&[0; 16]); // ciaddr, yiaddr, siaddr, giaddr
    p.extend_from_slice(mac);
    p.resize(HEADER_LEN, 0); // rest of chaddr, sname, file
    p.extend_from_slice(&MAGIC_COOKIE);

    put_option(&mut p, OPT_MESSAGE_TYPE, &[msg as u8]);
    let mut client_id = [0u8; 7];
    client_id[0] = HTYPE_ETHER;
    client_id[1..].copy_from_slice(mac);
    put_option(&mut p, OPT_CLIENT_ID, &client_id);
    for (code, value) in extra {
        put_option(&mut p, *code, value);
    }
    let host = hostname.as_bytes();
    if !host.is_empty() {
        put_option(&mut p, OPT_HOSTNAME, &host[..host.len().min(255)]);
    }
    put_option(&mut p, OPT_PARAMETER_LIST, &PARAMETERS);
    p.push(OPT_END);
    if p.len() < MIN_PACKET_LEN {
        p.resize(MIN_PACKET_LEN, OPT_PAD);
    }
    p
}

/// Appends one option; `value` must be 1..=255 bytes (callers guarantee it).
fn put_option(p: &mut Vec<u8>, code: u8, value: &[u8]) {
    let len = value.len().min(255);
    p.push(code);
    p.push(len as u8);
    p.extend_from_slice(&value[..len]);
}

/// Splits the options area into `(code, value)`, concatenating repeated
/// options (RFC 3396). Stops at END; running exactly out of bytes without
/// END is tolerated, an option cut short is not.
fn parse_options(mut b: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, ParseError> {
    let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
    while let Some((&code, rest)) = b.split_first() {
        match code {
            OPT_PAD => b = rest,
            OPT_END => break,
            _ => {
                let (&len, rest) = rest.split_first().ok_or(ParseError::Truncated(code))?;
                let len = usize::from(len);
                if rest.len() < len {
                    return Err(ParseError::Truncated(code));
                }
                let (value, rest) = rest.split_at(len);
                match out.iter_mut().find(|(c, _)| *c == code) {
                    Some((_, v)) => v.extend_from_slice(value),
                    None => out.push((code, value.to_vec())),
                }
                b = rest;
            }
        }
    }
    Ok(out)
}

fn ipv4_at(b: &[u8], at: usize) -> Ipv4Addr {
    let mut o = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        o.copy_from_slice(s);
    }
    Ipv4Addr::from(o)
}

fn one_addr(code: u8, v: &[u8]) -> Result<Ipv4Addr, ParseError> {
    let o: [u8; 4] = v
        .try_into()
        .map_err(|_| ParseError::BadLength { code, len: v.len() })?;
    Ok(Ipv4Addr::from(o))
}

fn addr_list(code: u8, v: &[u8]) -> Result<Vec<Ipv4Addr>, ParseError> {
    let chunks = v.chunks_exact(4);
    if v.is_empty() || !chunks.remainder().is_empty() {
        return Err(ParseError::BadLength { code, len: v.len() });
    }
    Ok(chunks
        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
        .collect())
}

fn text(v: &[u8]) -> Option<String> {
    // Some servers NUL-terminate strings.
    let v = v.split(|&b| b == 0).next().unwrap_or(&[]);
    let s = String::from_utf8_lossy(v).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Decodes a server reply. Option overload (52) is ignored: the `sname` and
/// `file` fields are never read for options.
pub(super) fn parse_reply(b: &[u8]) -> Result<Reply, ParseError> {
    if b.len() < HEADER_LEN + MAGIC_COOKIE.len() {
        return Err(ParseError::Short(b.len()));
    }
    if b[0] != BOOTREPLY {
        return Err(ParseError::NotReply(b[0]));
    }
    if b[1] != HTYPE_ETHER || b[2] != 6 {
        return Err(ParseError::NotEthernet {
            htype: b[1],
            hlen: b[2],
        });
    }
    if b[HEADER_LEN..HEADER_LEN + 4] != MAGIC_COOKIE {
        return Err(ParseError::BadCookie);
    }
    let xid = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    let yiaddr = ipv4_at(b, 16);
    let mut chaddr = [0u8; 16];
    chaddr.copy_from_slice(&b[28..44]);

    let mut reply = Reply {
        msg_type: MessageType::Offer,
        xid,
        chaddr,
        yiaddr,
        server_id: None,
        subnet_mask: None,
        routers: Vec::new(),
        dns: Vec::new(),
        domain: None,
        lease_secs: None,
        message: None,
    };
    let mut msg_type = None;
    for (code, v) in parse_options(&b[HEADER_LEN + 4..])? {
        match code {
            OPT_MESSAGE_TYPE => {
                let [t] = v[..] else {
                    return Err(ParseError::BadLength { code, len: v.len() });
                };
                msg_type = Some(MessageType::from_u8(t).ok_or(ParseError::BadMessageType(t))?);
            }
            OPT_SUBNET_MASK => reply.subnet_mask = Some(one_addr(code, &v)?),
            OPT_SERVER_ID => reply.server_id = Some(one_addr(code, &v)?),
            OPT_ROUTER => reply.routers = addr_list(code, &v)?,
            OPT_DNS => reply.dns = addr_list(code, &v)?,
            OPT_LEASE_TIME => {
                let o: [u8; 4] = v[..]
                    .try_into()
                    .map_err(|_| ParseError::BadLength { code, len: v.len() })?;
                reply.lease_secs = Some(u32::from_be_bytes(o));
            }
            OPT_DOMAIN_NAME => reply.domain = text(&v),
            OPT_MESSAGE => reply.message = text(&v),
            _ => {}
        }
    }
    reply.msg_type = msg_type.ok_or(ParseError::NoMessageType)?;
    Ok(reply)
}

/// The prefix length a lease implies: the subnet mask if given, otherwise
/// the address class (what servers without option 1 assume).
fn lease_prefix(address: Ipv4Addr, mask: Option<Ipv4Addr>) -> Option<u8> {
    match mask {
        Some(m) => netmask_to_prefix(m),
        None => Some(match address.octets()[0] {
            0..=127 => 8,
            128..=191 => 16,
            _ => 24,
        }),
    }
}

/// Combines the OFFER and the ACK into a lease (the ACK wins; the OFFER fills
/// in what the ACK left out).
pub(super) fn lease_from(
    iface: &str,
    server: Ipv4Addr,
    offer: &Reply,
    ack: &Reply,
) -> Result<Lease, NetError> {
    let bad = |reason: String| NetError::BadLease {
        iface: iface.to_string(),
        server,
        reason,
    };
    let address = if ack.yiaddr.is_unspecified() {
        offer.yiaddr
    } else {
        ack.yiaddr
    };
    if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
        return Err(bad(format!("address {address}")));
    }
    let mask = ack.subnet_mask.or(offer.subnet_mask);
    let prefix_len = lease_prefix(address, mask).ok_or_else(|| {
        bad(format!(
            "non-contiguous subnet mask {}",
            mask.unwrap_or(Ipv4Addr::UNSPECIFIED)
        ))
    })?;
    let routers = if ack.routers.is_empty() {
        &offer.routers
    } else {
        &ack.routers
    };
    let gateway = routers
        .iter()
        .copied()
        .find(|r| !r.is_unspecified() && !r.is_broadcast() && *r != address);
    let dns = if ack.dns.is_empty() {
        &offer.dns
    } else {
        &ack.dns
    };
    Ok(Lease {
        interface: iface.to_string(),
        address,
        prefix_len,
        gateway,
        dns: dns.clone(),
        domain: ack.domain.clone().or_else(|| offer.domain.clone()),
        lease_secs: ack.lease_secs.or(offer.lease_secs).unwrap_or(u32::MAX),
        server,
    })
}

/// Runs DISCOVER → OFFER → REQUEST → ACK on `iface` (which must be up) until
/// a lease is acknowledged or `timeout` has passed. A NAK restarts from
/// DISCOVER with a new transaction id.
pub(super) fn obtain_lease(
    iface: &str,
    mac: [u8; 6],
    hostname: &str,
    timeout: Duration,
) -> Result<Lease, NetError> {
    let sock = open_socket(iface)?;
    let start = Instant::now();
    let mut ex = Exchange {
        iface,
        sock: &sock,
        start,
        deadline: start + timeout,
        send_error: None,
    };
    let mut nak: Option<NetError> = None;
    loop {
        let xid = random_xid(&mac);
        let offer = ex.run(
            "send DHCPDISCOVER",
            |secs| encode_discover(xid, &mac, secs, hostname),
            |r| {
                r.is_for(xid, &mac)
                    && r.msg_type == MessageType::Offer
                    && !r.yiaddr.is_unspecified()
            },
        )?;
        let Some((offer, src)) = offer else {
            return Err(nak
                .or_else(|| ex.send_error.take())
                .unwrap_or(NetError::NoOffer {
                    iface: iface.to_string(),
                    waited: timeout,
                }));
        };
        let server = offer.server_id.unwrap_or(src);
        let requested = offer.yiaddr;
        let answer = ex.run(
            "send DHCPREQUEST",
            |secs| encode_request(xid, &mac, secs, hostname, requested, server),
            |r| {
                r.is_for(xid, &mac)
                    && matches!(r.msg_type, MessageType::Ack | MessageType::Nak)
                    && r.server_id.is_none_or(|s| s == server)
            },
        )?;
        match answer {
            Some((ack, _)) if ack.msg_type == MessageType::Ack => {
                return lease_from(iface, server, &offer, &ack);
            }
            Some((nak_reply, _)) => {
                nak = Some(NetError::Nak {
                    iface: iface.to_string(),
                    server,
                    requested,
                    message: nak_reply.message,
                });
                // Do not spin on a server that NAKs at once.
                std::thread::sleep(
                    FIRST_RETRY.min(ex.deadline.saturating_duration_since(Instant::now())),
                );
            }
            None => {
                return Err(ex.send_error.take().unwrap_or(NetError::NoAck {
                    iface: iface.to_string(),
                    server,
                    offered: requested,
                    waited: timeout,
                }))
            }
        }
    }
}

struct Exchange<'a> {
    iface: &'a str,
    sock: &'a UdpSocket,
    start: Instant,
    deadline: Instant,
    /// The last failed send; reported if nothing is received at all.
    send_error: Option<NetError>,
}

impl Exchange<'_> {
    /// Sends `build(secs)` and waits for a reply passing `accept`, resending
    /// with exponential backoff until the deadline. `Ok(None)` on timeout.
    fn run(
        &mut self,
        step: &'static str,
        build: impl Fn(u16) -> Vec<u8>,
        accept: impl Fn(&Reply) -> bool,
    ) -> Result<Option<(Reply, Ipv4Addr)>, NetError> {
        let dest = SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT);
        let mut wait = FIRST_RETRY;
        let mut buf = [0u8; 1536];
        while Instant::now() < self.deadline {
            let secs = u16::try_from(self.start.elapsed().as_secs()).unwrap_or(u16::MAX);
            match self.sock.send_to(&build(secs), dest) {
                Ok(_) => self.send_error = None,
                // The link may not be ready yet (ENETDOWN, ENOBUFS, ...): retry later.
                Err(error) => {
                    self.send_error = Some(NetError::Io {
                        iface: self.iface.to_string(),
                        step,
                        error,
                    })
                }
            }
            let until = (Instant::now() + wait).min(self.deadline);
            wait = (wait * 2).min(MAX_RETRY);
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                self.sock
                    .set_read_timeout(Some(left))
                    .map_err(|error| self.err("set receive timeout", error))?;
                let (n, src) = match self.sock.recv_from(&mut buf) {
                    Ok(r) => r,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) =>
                    {
                        continue
                    }
                    Err(error) => return Err(self.err("receive DHCP reply", error)),
                };
                let Ok(reply) = parse_reply(&buf[..n]) else {
                    continue; // not for us or garbage: keep listening
                };
                if accept(&reply) {
                    let src = match src {
                        SocketAddr::V4(a) => *a.ip(),
                        SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
                    };
                    return Ok(Some((reply, src)));
                }
            }
        }
        Ok(None)
    }

    fn err(&self, step: &'static str, error: io::Error) -> NetError {
        NetError::Io {
            iface: self.iface.to_string(),
            step,
            error,
        }
    }
}

fn setsockopt(
    fd: &OwnedFd,
    iface: &str,
    step: &'static str,
    opt: libc::c_int,
    val: &[u8],
) -> Result<(), NetError> {
    // SAFETY: `val` is valid for `val.len()` bytes during the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            val.as_ptr() as *const c_void,
            val.len() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(NetError::Io {
            iface: iface.to_string(),
            step,
            error: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// UDP socket on `0.0.0.0:68`, bound to `iface`, allowed to broadcast.
fn open_socket(iface: &str) -> Result<UdpSocket, NetError> {
    let io_err = |step| NetError::Io {
        iface: iface.to_string(),
        step,
        error: io::Error::last_os_error(),
    };
    // SAFETY: plain socket(2) call; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io_err("open DHCP socket"));
    }
    // SAFETY: `raw` is a fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one = 1i32.to_ne_bytes();
    setsockopt(
        &fd,
        iface,
        "set SO_REUSEADDR on DHCP socket",
        libc::SO_REUSEADDR,
        &one,
    )?;
    setsockopt(
        &fd,
        iface,
        "set SO_BROADCAST on DHCP socket",
        libc::SO_BROADCAST,
        &one,
    )?;
    setsockopt(
        &fd,
        iface,
        "bind DHCP socket to interface",
        libc::SO_BINDTODEVICE,
        iface.as_bytes(),
    )?;
    // SAFETY: sockaddr_in is plain C data; all-zero is INADDR_ANY, port 0.
    let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_port = CLIENT_PORT.to_be();
    // SAFETY: `sin` is a valid sockaddr_in of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sin as *const libc::sockaddr_in as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io_err("bind DHCP socket to port 68"));
    }
    Ok(UdpSocket::from(fd))
}

/// A transaction id: from the kernel's CSPRNG if it is ready, otherwise the
/// clock mixed with the MAC (unique enough per boot and per machine).
fn random_xid(mac: &[u8; 6]) -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: `b` is valid for 4 bytes; GRND_NONBLOCK never blocks early in boot.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut c_void, b.len(), libc::GRND_NONBLOCK) };
    if n == 4 {
        return u32::from_ne_bytes(b);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    let m = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]);
    (nanos ^ m).wrapping_mul(0x9e37_79b9) ^ u32::from(std::process::id() as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const XID: u32 = 0xdead_beef;

    /// A BOOTREPLY header with `options` after the cookie, built by hand.
    fn reply_bytes(xid: u32, mac: &[u8; 6], yiaddr: [u8; 4], options: &[u8]) -> Vec<u8> {
        let mut b = vec![2, 1, 6, 0];
        b.extend_from_slice(&xid.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0x80, 0]); // secs, flags
        b.extend_from_slice(&[0, 0, 0, 0]); // ciaddr
        b.extend_from_slice(&yiaddr);
        b.extend_from_slice(&[10, 0, 2, 2]); // siaddr
        b.extend_from_slice(&[0, 0, 0, 0]); // giaddr
        b.extend_from_slice(mac);
        b.resize(236, 0);
        b.extend_from_slice(&[99, 130, 83, 99]);
        b.extend_from_slice(options);
        b
    }

    /// What QEMU's slirp sends: 10.0.2.15/24 via 10.0.2.2, DNS 10.0.2.3.
    const OFFER_OPTS: &[u8] = &[
        53, 1, 2, // OFFER
        54, 4, 10, 0, 2, 2, // server id
        51, 4, 0, 0, 0x0e, 0x10, // lease 3600 s
        0, 0, // pads
        1, 4, 255, 255, 255, 0, // mask
        3, 4, 10, 0, 2, 2, // router
        6, 4, 10, 0, 2, 3,   // dns
        255, // end
        0, 0, 0, 0, // padding after end
    ];

    fn opts(packet: &[u8]) -> Vec<(u8, Vec<u8>)> {
        assert_eq!(&packet[236..240], &MAGIC_COOKIE);
        parse_options(&packet[240..]).unwrap()
    }

    fn opt(packet: &[u8], code: u8) -> Option<Vec<u8>> {
        opts(packet)
            .into_iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v)
    }

    #[test]
    fn discover_layout() {
        let p = encode_discover(XID, &MAC, 3, "node-1");
        assert!(p.len() >= MIN_PACKET_LEN);
        assert_eq!(&p[..4], &[1, 1, 6, 0]);
        assert_eq!(&p[4..8], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&p[8..10], &[0, 3]); // secs
        assert_eq!(&p[10..12], &[0x80, 0x00]); // broadcast flag
        assert_eq!(&p[12..28], &[0; 16]); // ciaddr..giaddr
        assert_eq!(&p[28..34], &MAC);
        assert_eq!(&p[34..236], &[0; 202][..]); // chaddr pad, sname, file
        assert_eq!(opt(&p, OPT_MESSAGE_TYPE), Some(vec![1]));
        assert_eq!(opt(&p, OPT_HOSTNAME), Some(b"node-1".to_vec()));
        assert_eq!(opt(&p, OPT_PARAMETER_LIST), Some(vec![1, 3, 6, 15, 51, 54]));
        assert_eq!(
            opt(&p, OPT_CLIENT_ID),
            Some(vec![1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
        );
        assert_eq!(opt(&p, OPT_REQUESTED_IP), None);
        assert_eq!(opt(&p, OPT_SERVER_ID), None);
        // Message type comes first, END is present and only PAD follows it.
        assert_eq!(&p[240..243], &[53, 1, 1]);
        let end = p[240..].iter().position(|&b| b == OPT_END).unwrap() + 240;
        assert_eq!(opts(&p[..end + 1]).len(), opts(&p).len());
        assert!(p[end + 1..].iter().all(|&b| b == 0));
    }

    #[test]
    fn discover_hostname_edge_cases() {
        let p = encode_discover(XID, &MAC, 0, "");
        assert_eq!(opt(&p, OPT_HOSTNAME), None);
        let long = "h".repeat(300);
        let p = encode_discover(XID, &MAC, 0, &long);
        assert_eq!(opt(&p, OPT_HOSTNAME).map(|v| v.len()), Some(255));
    }

    #[test]
    fn request_layout() {
        let p = encode_request(
            XID,
            &MAC,
            0,
            "node-1",
            Ipv4Addr::new(10, 0, 2, 15),
            Ipv4Addr::new(10, 0, 2, 2),
        );
        assert_eq!(&p[..4], &[1, 1, 6, 0]);
        assert_eq!(&p[10..12], &[0x80, 0x00]);
        assert_eq!(&p[12..16], &[0; 4]); // ciaddr stays 0 while selecting
        assert_eq!(opt(&p, OPT_MESSAGE_TYPE), Some(vec![3]));
        assert_eq!(opt(&p, OPT_REQUESTED_IP), Some(vec![10, 0, 2, 15]));
        assert_eq!(opt(&p, OPT_SERVER_ID), Some(vec![10, 0, 2, 2]));
        assert_eq!(opt(&p, OPT_HOSTNAME), Some(b"node-1".to_vec()));
        assert_eq!(opt(&p, OPT_PARAMETER_LIST), Some(PARAMETERS.to_vec()));
    }

    #[test]
    fn options_pad_end_and_concatenation() {
        let o = parse_options(&[
            0, 0, 6, 4, 1, 1, 1, 1, 0, 6, 4, 8, 8, 8, 8, 255, 6, 4, 9, 9, 9, 9,
        ])
        .unwrap();
        assert_eq!(o, vec![(6, vec![1, 1, 1, 1, 8, 8, 8, 8])]);
        // No END but nothing cut short: accepted.
        assert_eq!(parse_options(&[53, 1, 5]).unwrap(), vec![(53, vec![5])]);
        assert_eq!(parse_options(&[]).unwrap(), vec![]);
        // Zero-length option is fine at this level.
        assert_eq!(parse_options(&[80, 0, 255]).unwrap(), vec![(80, vec![])]);
        assert_eq!(parse_options(&[53]), Err(ParseError::Truncated(53)));
        assert_eq!(
            parse_options(&[6, 8, 1, 2, 3, 4]),
            Err(ParseError::Truncated(6))
        );
    }

    #[test]
    fn parses_offer() {
        let b = reply_bytes(XID, &MAC, [10, 0, 2, 15], OFFER_OPTS);
        let r = parse_reply(&b).unwrap();
        assert_eq!(r.msg_type, MessageType::Offer);
        assert!(r.is_for(XID, &MAC));
        assert!(!r.is_for(XID ^ 1, &MAC));
        assert!(!r.is_for(XID, &[0x52, 0x54, 0, 0, 0, 1]));
        assert_eq!(r.yiaddr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(r.server_id, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(r.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(r.routers, vec![Ipv4Addr::new(10, 0, 2, 2)]);
        assert_eq!(r.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(r.lease_secs, Some(3600));
        assert_eq!(r.domain, None);
        assert_eq!(r.message, None);
    }

    #[test]
    fn parses_ack_and_builds_lease() {
        let offer = parse_reply(&reply_bytes(XID, &MAC, [10, 0, 2, 15], OFFER_OPTS)).unwrap();
        let ack_opts = [
            53, 1, 5, // ACK
            54, 4, 10, 0, 2, 2, //
            51, 4, 0, 1, 0x51, 0x80, // 86400 s
            1, 4, 255, 255, 255, 0, //
            3, 8, 0, 0, 0, 0, 10, 0, 2, 2, // a bogus 0.0.0.0 router first
            6, 8, 10, 0, 2, 3, 1, 1, 1, 1, //
            15, 4, b'l', b'a', b'n', 0, // NUL-terminated domain
            255,
        ];
        let ack = parse_reply(&reply_bytes(XID, &MAC, [10, 0, 2, 15], &ack_opts)).unwrap();
        assert_eq!(ack.msg_type, MessageType::Ack);
        assert_eq!(ack.domain.as_deref(), Some("lan"));
        let lease = lease_from("eth0", Ipv4Addr::new(10, 0, 2, 2), &offer, &ack).unwrap();
        assert_eq!(
            lease,
            Lease {
                interface: "eth0".into(),
                address: Ipv4Addr::new(10, 0, 2, 15),
                prefix_len: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
                dns: vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)],
                domain: Some("lan".into()),
                lease_secs: 86400,
                server: Ipv4Addr::new(10, 0, 2, 2),
            }
        );
    }

    #[test]
    fn minimal_ack_falls_back_to_offer_and_defaults() {
        let offer = parse_reply(&reply_bytes(XID, &MAC, [10, 0, 2, 15], OFFER_OPTS)).unwrap();
        let ack = parse_reply(&reply_bytes(XID, &MAC, [0; 4], &[53, 1, 5, 255])).unwrap();
        let lease = lease_from("eth0", Ipv4Addr::new(10, 0, 2, 2), &offer, &ack).unwrap();
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(lease.prefix_len, 24);
        assert_eq!(lease.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(lease.lease_secs, 3600);

        // Nothing anywhere: classful prefix, no gateway, infinite lease.
        let bare = parse_reply(&reply_bytes(XID, &MAC, [172, 16, 0, 9], &[53, 1, 2])).unwrap();
        let ack = parse_reply(&reply_bytes(XID, &MAC, [172, 16, 0, 9], &[53, 1, 5])).unwrap();
        let lease = lease_from("eth0", Ipv4Addr::new(172, 16, 0, 1), &bare, &ack).unwrap();
        assert_eq!(lease.prefix_len, 16);
        assert_eq!(lease.gateway, None);
        assert_eq!(lease.lease_secs, u32::MAX);
        assert!(lease.dns.is_empty());
    }

    #[test]
    fn bad_lease_is_an_error() {
        let offer = parse_reply(&reply_bytes(XID, &MAC, [10, 0, 2, 15], &[53, 1, 2])).unwrap();
        let ack = parse_reply(&reply_bytes(
            XID,
            &MAC,
            [10, 0, 2, 15],
            &[53, 1, 5, 1, 4, 255, 0, 255, 0, 255],
        ))
        .unwrap();
        let err = lease_from("eth0", Ipv4Addr::new(10, 0, 2, 2), &offer, &ack).unwrap_err();
        assert_eq!(
            err.to_string(),
            "eth0: unusable DHCP lease from 10.0.2.2: non-contiguous subnet mask 255.0.255.0"
        );
        let none = parse_reply(&reply_bytes(XID, &MAC, [0; 4], &[53, 1, 5])).unwrap();
        let zero_offer = parse_reply(&reply_bytes(XID, &MAC, [0; 4], &[53, 1, 2])).unwrap();
        assert!(lease_from("eth0", Ipv4Addr::new(10, 0, 2, 2), &zero_offer, &none).is_err());
    }

    #[test]
    fn parses_nak_with_message() {
        let nak_opts = [
            53, 1, 6, 54, 4, 10, 0, 2, 2, 56, 13, b'w', b'r', b'o', b'n', b'g', b' ', b'n', b'e',
            b't', b'w', b'o', b'r', b'k', 255,
        ];
        let r = parse_reply(&reply_bytes(XID, &MAC, [0; 4], &nak_opts)).unwrap();
        assert_eq!(r.msg_type, MessageType::Nak);
        assert_eq!(r.message.as_deref(), Some("wrong network"));
        assert_eq!(r.yiaddr, Ipv4Addr::UNSPECIFIED);
    }

    #[test]
    fn option_overload_is_ignored() {
        // Option 52 says "file and sname hold options too"; we do not read them.
        let mut b = reply_bytes(XID, &MAC, [10, 0, 2, 15], &[53, 1, 2, 52, 1, 3, 255]);
        b[108..114].copy_from_slice(&[3, 4, 6, 6, 6, 6]);
        b[44..50].copy_from_slice(&[6, 4, 7, 7, 7, 7]);
        let r = parse_reply(&b).unwrap();
        assert_eq!(r.msg_type, MessageType::Offer);
        assert!(r.routers.is_empty());
        assert!(r.dns.is_empty());
    }

    #[test]
    fn malformed_replies_are_errors() {
        let good = reply_bytes(XID, &MAC, [10, 0, 2, 15], OFFER_OPTS);
        assert_eq!(parse_reply(&[]), Err(ParseError::Short(0)));
        assert_eq!(parse_reply(&good[..239]), Err(ParseError::Short(239)));

        let mut req = good.clone();
        req[0] = 1;
        assert_eq!(parse_reply(&req), Err(ParseError::NotReply(1)));

        let mut ib = good.clone();
        ib[1] = 32;
        assert!(matches!(
            parse_reply(&ib),
            Err(ParseError::NotEthernet { .. })
        ));

        let mut cookie = good.clone();
        cookie[239] = 0;
        assert_eq!(parse_reply(&cookie), Err(ParseError::BadCookie));

        let cases: &[(&[u8], ParseError)] = &[
            (&[], ParseError::NoMessageType),
            (&[1, 4, 255, 255, 255, 0, 255], ParseError::NoMessageType),
            (&[53, 1, 9, 255], ParseError::BadMessageType(9)),
            (
                &[53, 2, 2, 2, 255],
                ParseError::BadLength { code: 53, len: 2 },
            ),
            (
                &[53, 1, 2, 51, 3, 0, 0, 1, 255],
                ParseError::BadLength { code: 51, len: 3 },
            ),
            (
                &[53, 1, 2, 54, 5, 1, 2, 3, 4, 5],
                ParseError::BadLength { code: 54, len: 5 },
            ),
            (
                &[53, 1, 2, 3, 5, 1, 2, 3, 4, 5],
                ParseError::BadLength { code: 3, len: 5 },
            ),
            (
                &[53, 1, 2, 6, 0, 255],
                ParseError::BadLength { code: 6, len: 0 },
            ),
            (&[53, 1, 2, 6, 8, 1, 2, 3, 4], ParseError::Truncated(6)),
            (&[53, 1, 2, 12], ParseError::Truncated(12)),
        ];
        for (o, want) in cases {
            let b = reply_bytes(XID, &MAC, [10, 0, 2, 15], o);
            assert_eq!(parse_reply(&b).as_ref(), Err(want), "options {o:?}");
        }
    }

    #[test]
    fn never_panics_on_truncation_or_noise() {
        let good = reply_bytes(XID, &MAC, [10, 0, 2, 15], OFFER_OPTS);
        for n in 0..=good.len() {
            let _ = parse_reply(&good[..n]);
        }
        // Noise after a valid header, from a small deterministic generator.
        let mut state = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut b = good[..240].to_vec();
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let len = (state % 64) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                b.push((state & 0xff) as u8);
            }
            let _ = parse_reply(&b);
        }
    }

    #[test]
    fn encoded_request_round_trips_through_option_parser() {
        // Our own encoder's output is well-formed for our own option parser,
        // whatever the hostname length.
        for len in [0usize, 1, 60, 254, 255, 256, 400] {
            let p = encode_request(
                XID,
                &MAC,
                0,
                &"x".repeat(len),
                Ipv4Addr::LOCALHOST,
                Ipv4Addr::LOCALHOST,
            );
            assert!(parse_options(&p[240..]).is_ok());
        }
    }

    #[test]
    fn xid_is_not_constant() {
        let a = random_xid(&MAC);
        let b = random_xid(&MAC);
        let c = random_xid(&MAC);
        assert!(a != b || b != c);
    }
}
