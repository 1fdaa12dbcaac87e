//! Cluster DNS (CoreDNS's job in K3s): answers `<svc>.<ns>.svc.<domain>`, SRV for named ports,
//! PTR for Service IPs and `a-b-c-d.<ns>.pod.<domain>` from the API objects the agent already
//! watches, and forwards every other name to the host's resolvers. The DNS wire format is
//! written here (RFC 1035: header, questions, resource records; compression is read, never
//! written) to keep the agent small.
//!
//! Each node answers its own pods on the bridge gateway; proxy.rs DNATs the kube-dns Service
//! IP there, the way NodeLocal DNSCache does.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::proxy::{slices_by_service, str_at};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// Records change as fast as pods do; a short TTL keeps caches honest.
pub const TTL: u32 = 5;
const UDP_LIMIT: usize = 512;
/// The largest UDP answer we give an EDNS client, whatever it announces.
const EDNS_LIMIT: usize = 1232;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
const TCP_IDLE: Duration = Duration::from_secs(10);

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no address to serve DNS on")]
    NoBind,
    #[error("reading {path}: {source}")]
    ReadResolvConf {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why a packet could not be read; answered with FORMERR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("packet truncated")]
    Truncated,
    #[error("bad name: {0}")]
    BadName(&'static str),
    #[error("compression pointer loop")]
    PointerLoop,
}

// ---------------------------------------------------------------------------------------------
// Wire format

/// A DNS message as far as this server needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u16,
    pub flags: u16,
    pub questions: Vec<Question>,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    /// UDP payload size from an EDNS OPT record in the additional section.
    pub edns_udp_size: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Dotted, without the trailing dot, in the case the client used.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub ttl: u32,
    pub data: RData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    A(Ipv4Addr),
    Cname(String),
    Ptr(String),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    Soa {
        mname: String,
        rname: String,
        serial: u32,
        minimum: u32,
    },
    /// Any type we do not interpret (kept when relaying is not involved).
    Other {
        rtype: u16,
        data: Vec<u8>,
    },
}

impl RData {
    pub fn rtype(&self) -> u16 {
        match self {
            RData::A(_) => TYPE_A,
            RData::Cname(_) => TYPE_CNAME,
            RData::Ptr(_) => TYPE_PTR,
            RData::Srv { .. } => TYPE_SRV,
            RData::Soa { .. } => TYPE_SOA,
            RData::Other { rtype, .. } => *rtype,
        }
    }
}

pub fn flag_qr(flags: u16) -> bool {
    flags & 0x8000 != 0
}
pub fn flag_tc(flags: u16) -> bool {
    flags & 0x0200 != 0
}
pub fn opcode(flags: u16) -> u8 {
    ((flags >> 11) & 0xf) as u8
}
pub fn rcode(flags: u16) -> u8 {
    (flags & 0xf) as u8
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, WireError> {
        let b = *self.buf.get(self.pos).ok_or(WireError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from(self.u8()?) << 8 | u16::from(self.u8()?))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from(self.u16()?) << 16 | u32::from(self.u16()?))
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let slice = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    /// Reads a possibly compressed name; the cursor ends after the name's first encoding.
    fn name(&mut self) -> Result<String, WireError> {
        let (name, end) = read_name_at(self.buf, self.pos)?;
        self.pos = end;
        Ok(name)
    }
}

/// Decodes the name at `start`, following compression pointers, and returns it with the
/// offset just past its encoding at `start`.
fn read_name_at(buf: &[u8], start: usize) -> Result<(String, usize), WireError> {
    let mut labels: Vec<String> = Vec::new();
    let mut pos = start;
    let mut end = None;
    let mut total = 0usize;
    let mut jumps = 0;
    loop {
        let len = *buf.get(pos).ok_or(WireError::Truncated)?;
        match len & 0xc0 {
            0x00 => {
                if len == 0 {
                    let end = end.unwrap_or(pos + 1);
                    return Ok((labels.join("."), end));
                }
                let label = buf
                    .get(pos + 1..pos + 1 + usize::from(len))
                    .ok_or(WireError::Truncated)?;
                total += usize::from(len) + 1;
                if total > 255 {
                    return Err(WireError::BadName("longer than 255 bytes"));
                }
                if label.contains(&b'.') {
                    return Err(WireError::BadName("dot inside a label"));
                }
                labels.push(String::from_utf8_lossy(label).into_owned());
                pos += 1 + usize::from(len);
            }
            0xc0 => {
                let low = *buf.get(pos + 1).ok_or(WireError::Truncated)?;
                if end.is_none() {
                    end = Some(pos + 2);
                }
                jumps += 1;
                // A pointer must go backwards; a bounded count also stops cycles among those.
                let target = usize::from(len & 0x3f) << 8 | usize::from(low);
                if target >= pos || jumps > 64 {
                    return Err(WireError::PointerLoop);
                }
                pos = target;
            }
            _ => return Err(WireError::BadName("reserved label type")),
        }
    }
}

fn parse_record(r: &mut Reader<'_>) -> Result<(Record, u16), WireError> {
    let name = r.name()?;
    let rtype = r.u16()?;
    let class = r.u16()?;
    let ttl = r.u32()?;
    let len = usize::from(r.u16()?);
    let rdata_start = r.pos;
    let raw = r.bytes(len)?;
    let data = match rtype {
        TYPE_A if len == 4 => RData::A(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        TYPE_CNAME => RData::Cname(read_name_at(r.buf, rdata_start)?.0),
        TYPE_PTR => RData::Ptr(read_name_at(r.buf, rdata_start)?.0),
        TYPE_SRV if len >= 7 => {
            let mut sub = Reader {
                buf: r.buf,
                pos: rdata_start,
            };
            RData::Srv {
                priority: sub.u16()?,
                weight: sub.u16()?,
                port: sub.u16()?,
                target: sub.name()?,
            }
        }
        _ => RData::Other {
            rtype,
            data: raw.to_vec(),
        },
    };
    Ok((Record { name, ttl, data }, class))
}

impl Message {
    /// Parses a whole message. SOA rdata of received messages is kept as `Other`.
    pub fn parse(buf: &[u8]) -> Result<Message, WireError> {
        let mut r = Reader { buf, pos: 0 };
        let id = r.u16()?;
        let flags = r.u16()?;
        let qd = r.u16()?;
        let an = r.u16()?;
        let ns = r.u16()?;
        let ar = r.u16()?;
        let mut msg = Message {
            id,
            flags,
            questions: Vec::new(),
            answers: Vec::new(),
            authority: Vec::new(),
            edns_udp_size: None,
        };
        for _ in 0..qd {
            let name = r.name()?;
            let qtype = r.u16()?;
            let qclass = r.u16()?;
            msg.questions.push(Question {
                name,
                qtype,
                qclass,
            });
        }
        for _ in 0..an {
            msg.answers.push(parse_record(&mut r)?.0);
        }
        for _ in 0..ns {
            msg.authority.push(parse_record(&mut r)?.0);
        }
        for _ in 0..ar {
            let (record, class) = parse_record(&mut r)?;
            if record.data.rtype() == TYPE_OPT {
                msg.edns_udp_size = Some(class);
            }
        }
        Ok(msg)
    }

    /// Encodes the message; answers that do not fit in `limit` bytes are dropped and TC is set.
    pub fn encode(&self, limit: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        put_u16(&mut out, self.id);
        put_u16(&mut out, self.flags);
        put_u16(&mut out, self.questions.len() as u16);
        put_u16(&mut out, 0); // answer count, patched below
        put_u16(&mut out, 0); // authority count, patched below
        put_u16(&mut out, 0);
        for q in &self.questions {
            put_name(&mut out, &q.name);
            put_u16(&mut out, q.qtype);
            put_u16(&mut out, q.qclass);
        }
        let mut answers = 0u16;
        let mut truncated = false;
        for record in &self.answers {
            let before = out.len();
            put_record(&mut out, record);
            if out.len() > limit {
                out.truncate(before);
                truncated = true;
                break;
            }
            answers += 1;
        }
        let mut authority = 0u16;
        if !truncated {
            for record in &self.authority {
                let before = out.len();
                put_record(&mut out, record);
                if out.len() > limit {
                    out.truncate(before);
                    break;
                }
                authority += 1;
            }
        }
        out[6..8].copy_from_slice(&answers.to_be_bytes());
        out[8..10].copy_from_slice(&authority.to_be_bytes());
        if truncated {
            out[2] |= 0x02;
        }
        out
    }
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Writes a name uncompressed. Over-long labels are cut to 63 bytes: names reaching here come
/// from our own records or a question we already parsed, so this only guards the format.
fn put_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let bytes = &label.as_bytes()[..label.len().min(63)];
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    out.push(0);
}

fn put_record(out: &mut Vec<u8>, record: &Record) {
    put_name(out, &record.name);
    put_u16(out, record.data.rtype());
    put_u16(out, CLASS_IN);
    out.extend_from_slice(&record.ttl.to_be_bytes());
    let len_at = out.len();
    put_u16(out, 0);
    match &record.data {
        RData::A(ip) => out.extend_from_slice(&ip.octets()),
        RData::Cname(name) | RData::Ptr(name) => put_name(out, name),
        RData::Srv {
            priority,
            weight,
            port,
            target,
        } => {
            put_u16(out, *priority);
            put_u16(out, *weight);
            put_u16(out, *port);
            put_name(out, target);
        }
        RData::Soa {
            mname,
            rname,
            serial,
            minimum,
        } => {
            put_name(out, mname);
            put_name(out, rname);
            out.extend_from_slice(&serial.to_be_bytes());
            for v in [7200u32, 1800, 86400, *minimum] {
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
        RData::Other { data, .. } => out.extend_from_slice(data),
    }
    let len = (out.len() - len_at - 2) as u16;
    out[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
}

/// A reply carrying only a header and the question, e.g. FORMERR or SERVFAIL.
fn error_reply(id: u16, query_flags: u16, questions: Vec<Question>, code: u8) -> Message {
    Message {
        id,
        flags: reply_flags(query_flags, false, code),
        questions,
        answers: Vec::new(),
        authority: Vec::new(),
        edns_udp_size: None,
    }
}

fn reply_flags(query_flags: u16, authoritative: bool, code: u8) -> u16 {
    let opcode_and_rd = query_flags & 0x7900; // opcode + RD
    let aa = if authoritative { 0x0400 } else { 0 };
    0x8000 | opcode_and_rd | aa | 0x0080 | u16::from(code)
}

// ---------------------------------------------------------------------------------------------
// Records from API objects

/// The cluster's names, rebuilt from scratch on every update.
#[derive(Debug, Default, Clone)]
pub struct Records {
    domain: String,
    by_name: HashMap<String, Vec<RData>>,
    /// Every name and every ancestor inside the domain: those exist even without records
    /// (NOERROR/NODATA instead of NXDOMAIN).
    existing: HashSet<String>,
}

impl Records {
    pub fn new(domain: &str) -> Self {
        let domain = normalize(domain);
        let mut records = Records {
            domain: domain.clone(),
            ..Default::default()
        };
        records.existing.insert(domain);
        records
    }

    pub fn build(
        domain: &str,
        services: &[Value],
        endpoint_slices: &[Value],
        pods: &[Value],
    ) -> Self {
        let mut records = Records::new(domain);
        let slices = slices_by_service(endpoint_slices);
        for svc in services {
            records.add_service(svc, &slices);
        }
        for pod in pods {
            records.add_pod(pod);
        }
        records
    }

    pub fn lookup(&self, name: &str) -> Option<&[RData]> {
        self.by_name.get(&normalize(name)).map(Vec::as_slice)
    }

    pub fn in_domain(&self, name: &str) -> bool {
        let name = normalize(name);
        name == self.domain || name.ends_with(&format!(".{}", self.domain))
    }

    fn exists(&self, name: &str) -> bool {
        self.existing.contains(&normalize(name))
    }

    fn insert(&mut self, name: String, data: RData) {
        let name = normalize(&name);
        if self.in_domain(&name) {
            let mut cur = name.as_str();
            while cur.len() > self.domain.len() {
                self.existing.insert(cur.to_string());
                match cur.split_once('.') {
                    Some((_, rest)) => cur = rest,
                    None => break,
                }
            }
        }
        let entry = self.by_name.entry(name).or_default();
        if !entry.contains(&data) {
            entry.push(data);
        }
    }

    fn add_service(&mut self, svc: &Value, slices: &HashMap<(String, String), Vec<&Value>>) {
        let (Some(name), Some(ns)) = (
            str_at(svc, &["metadata", "name"]),
            str_at(svc, &["metadata", "namespace"]),
        ) else {
            return;
        };
        let fqdn = format!("{name}.{ns}.svc.{}", self.domain);
        let spec = &svc["spec"];
        if spec["type"].as_str() == Some("ExternalName") {
            if let Some(target) = spec["externalName"].as_str() {
                self.insert(fqdn, RData::Cname(normalize(target)));
            }
            return;
        }
        let cluster_ip = spec["clusterIP"].as_str().unwrap_or("");
        let ports = spec["ports"].as_array().cloned().unwrap_or_default();
        if cluster_ip == "None" || cluster_ip.is_empty() {
            self.add_headless(&fqdn, svc, slices.get(&(ns.to_string(), name.to_string())));
            return;
        }
        let Ok(ip) = cluster_ip.parse::<Ipv4Addr>() else {
            return; // IPv6-only services have no A record
        };
        self.insert(fqdn.clone(), RData::A(ip));
        self.insert(reverse_name(ip), RData::Ptr(fqdn.clone()));
        for port in &ports {
            let (Some(port_name), Some(number)) = (port["name"].as_str(), port["port"].as_u64())
            else {
                continue; // SRV needs a named port
            };
            let proto = port["protocol"]
                .as_str()
                .unwrap_or("TCP")
                .to_ascii_lowercase();
            let srv = RData::Srv {
                priority: 0,
                weight: 100,
                port: number as u16,
                target: fqdn.clone(),
            };
            self.insert(format!("_{port_name}._{proto}.{fqdn}"), srv.clone());
            self.insert(fqdn.clone(), srv);
        }
    }

    fn add_headless(&mut self, fqdn: &str, svc: &Value, slices: Option<&Vec<&Value>>) {
        let publish_not_ready = svc["spec"]["publishNotReadyAddresses"].as_bool() == Some(true);
        for slice in slices.into_iter().flatten() {
            if slice["addressType"].as_str().is_some_and(|t| t != "IPv4") {
                continue;
            }
            let ports = slice["ports"].as_array().cloned().unwrap_or_default();
            for endpoint in slice["endpoints"].as_array().into_iter().flatten() {
                // The API says a missing `ready` means ready.
                let ready = endpoint["conditions"]["ready"].as_bool().unwrap_or(true);
                if !ready && !publish_not_ready {
                    continue;
                }
                let hostname = endpoint["hostname"].as_str();
                for ip in endpoint["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str()?.parse::<Ipv4Addr>().ok())
                {
                    self.insert(fqdn.to_string(), RData::A(ip));
                    let host_label = hostname.map(str::to_string).unwrap_or_else(|| dashed(ip));
                    let host_fqdn = format!("{host_label}.{fqdn}");
                    self.insert(host_fqdn.clone(), RData::A(ip));
                    if hostname.is_some() {
                        self.insert(reverse_name(ip), RData::Ptr(host_fqdn.clone()));
                    }
                    for port in &ports {
                        let (Some(port_name), Some(number)) =
                            (port["name"].as_str(), port["port"].as_u64())
                        else {
                            continue;
                        };
                        if port_name.is_empty() {
                            continue;
                        }
                        let proto = port["protocol"]
                            .as_str()
                            .unwrap_or("TCP")
                            .to_ascii_lowercase();
                        let srv = RData::Srv {
                            priority: 0,
                            weight: 100,
                            port: number as u16,
                            target: host_fqdn.clone(),
                        };
                        self.insert(format!("_{port_name}._{proto}.{fqdn}"), srv.clone());
                        self.insert(fqdn.to_string(), srv);
                    }
                }
            }
        }
        // The service name exists even with no ready endpoint yet.
        self.existing.insert(normalize(fqdn));
    }

    fn add_pod(&mut self, pod: &Value) {
        let Some(ns) = str_at(pod, &["metadata", "namespace"]) else {
            return;
        };
        let mut ips: Vec<&str> = pod["status"]["podIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["ip"].as_str())
            .collect();
        if let Some(ip) = pod["status"]["podIP"].as_str() {
            ips.push(ip);
        }
        for ip in ips.into_iter().filter_map(|s| s.parse::<Ipv4Addr>().ok()) {
            self.insert(
                format!("{}.{ns}.pod.{}", dashed(ip), self.domain),
                RData::A(ip),
            );
        }
    }

    fn soa(&self) -> Record {
        Record {
            name: self.domain.clone(),
            ttl: TTL,
            data: RData::Soa {
                mname: format!("ns.dns.{}", self.domain),
                rname: format!("hostmaster.{}", self.domain),
                serial: 1,
                minimum: TTL,
            },
        }
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn dashed(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{}-{}-{}-{}", o[0], o[1], o[2], o[3])
}

pub fn reverse_name(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
}

// ---------------------------------------------------------------------------------------------
// Answering

/// What to do with a query.
#[derive(Debug)]
enum Decision {
    Reply(Message),
    /// Not ours: relay to the upstreams. `prefix` holds CNAME answers to put in front.
    Forward {
        prefix: Vec<Record>,
        name: String,
    },
    Drop,
}

fn answer(records: &Records, packet: &[u8]) -> Decision {
    let query = match Message::parse(packet) {
        Ok(q) => q,
        Err(_) if packet.len() >= 4 => {
            let id = u16::from_be_bytes([packet[0], packet[1]]);
            let flags = u16::from_be_bytes([packet[2], packet[3]]);
            if flag_qr(flags) {
                return Decision::Drop;
            }
            return Decision::Reply(error_reply(id, flags, Vec::new(), RCODE_FORMERR));
        }
        Err(_) => return Decision::Drop,
    };
    if flag_qr(query.flags) {
        return Decision::Drop; // never answer answers: that is how reflection loops start
    }
    if opcode(query.flags) != 0 {
        return Decision::Reply(error_reply(
            query.id,
            query.flags,
            query.questions,
            RCODE_NOTIMP,
        ));
    }
    let [question] = query.questions.as_slice() else {
        return Decision::Reply(error_reply(
            query.id,
            query.flags,
            query.questions,
            RCODE_FORMERR,
        ));
    };
    let name = normalize(&question.name);
    let known = records.lookup(&name);
    let ours = records.in_domain(&name) || known.is_some();
    if !ours {
        return Decision::Forward {
            prefix: Vec::new(),
            name,
        };
    }
    let mut reply = Message {
        id: query.id,
        flags: 0,
        questions: query.questions.clone(),
        answers: Vec::new(),
        authority: Vec::new(),
        edns_udp_size: None,
    };
    let data = known.unwrap_or(&[]);
    if let (Some(RData::Cname(target)), false) = (data.first(), question.qtype == TYPE_CNAME) {
        let cname = Record {
            name: question.name.clone(),
            ttl: TTL,
            data: RData::Cname(target.clone()),
        };
        if !records.in_domain(target) {
            return Decision::Forward {
                prefix: vec![cname],
                name: target.clone(),
            };
        }
        reply.answers.push(cname);
        reply.flags = reply_flags(query.flags, true, RCODE_NOERROR);
        return Decision::Reply(reply);
    }
    reply.answers = data
        .iter()
        .filter(|d| question.qtype == TYPE_ANY || d.rtype() == question.qtype)
        .map(|d| Record {
            name: question.name.clone(),
            ttl: TTL,
            data: d.clone(),
        })
        .collect();
    let exists = known.is_some() || records.exists(&name);
    let code = if exists {
        RCODE_NOERROR
    } else {
        RCODE_NXDOMAIN
    };
    if reply.answers.is_empty() && records.in_domain(&name) {
        reply.authority.push(records.soa());
    }
    reply.flags = reply_flags(query.flags, true, code);
    Decision::Reply(reply)
}

/// Limit for a UDP answer: 512 bytes, more when the client announced EDNS.
fn udp_limit(packet: &[u8]) -> usize {
    match Message::parse(packet).ok().and_then(|m| m.edns_udp_size) {
        Some(size) => usize::from(size).clamp(UDP_LIMIT, EDNS_LIMIT),
        None => UDP_LIMIT,
    }
}

/// Relays a query to the first upstream that answers; TCP when UDP comes back truncated.
async fn forward(upstreams: &[SocketAddr], packet: &[u8], over_tcp: bool) -> Option<Vec<u8>> {
    for upstream in upstreams {
        let reply = if over_tcp {
            tcp_exchange(*upstream, packet).await
        } else {
            match udp_exchange(*upstream, packet).await {
                Some(r) if r.len() >= 4 && flag_tc(u16::from_be_bytes([r[2], r[3]])) => {
                    tcp_exchange(*upstream, packet).await.or(Some(r))
                }
                other => other,
            }
        };
        if reply.is_some() {
            return reply;
        }
        tracing::debug!(%upstream, "upstream DNS server did not answer");
    }
    None
}

async fn udp_exchange(upstream: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.ok()?;
    socket.connect(upstream).await.ok()?;
    socket.send(packet).await.ok()?;
    let mut buf = vec![0u8; 65535];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        // A connected socket only hears the upstream; still, insist on the same id.
        if n >= 2 && buf[..2] == packet[..2] {
            buf.truncate(n);
            return Some(buf);
        }
    }
}

async fn tcp_exchange(upstream: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let work = async {
        let mut stream = TcpStream::connect(upstream).await.ok()?;
        write_framed(&mut stream, packet).await.ok()?;
        read_framed(&mut stream).await.ok().flatten()
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, work)
        .await
        .ok()
        .flatten()
}

async fn write_framed(stream: &mut TcpStream, packet: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(packet.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let mut framed = Vec::with_capacity(packet.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(packet);
    stream.write_all(&framed).await
}

/// One length-prefixed message, or `None` at a clean end of stream.
async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

/// Shared by every listener: the records and where to forward.
struct State {
    records: RwLock<Arc<Records>>,
    upstreams: Vec<SocketAddr>,
}

impl State {
    fn records(&self) -> Arc<Records> {
        match self.records.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The reply bytes for one query, or `None` to stay silent.
    async fn respond(&self, packet: &[u8], over_tcp: bool) -> Option<Vec<u8>> {
        let limit = if over_tcp {
            usize::from(u16::MAX)
        } else {
            udp_limit(packet)
        };
        let decision = answer(&self.records(), packet);
        match decision {
            Decision::Drop => None,
            Decision::Reply(msg) => Some(msg.encode(limit)),
            // Plain forwarding relays the client's own packet untouched.
            Decision::Forward { prefix, .. } if prefix.is_empty() => {
                match forward(&self.upstreams, packet, over_tcp).await {
                    Some(reply) => Some(reply),
                    None => servfail(packet).map(|m| m.encode(limit)),
                }
            }
            Decision::Forward { prefix, name } => {
                self.chase_cname(packet, prefix, &name, over_tcp, limit)
                    .await
            }
        }
    }

    /// ExternalName services: resolve the CNAME's target upstream, as CoreDNS does, because
    /// stub resolvers in pods do not chase CNAMEs themselves.
    async fn chase_cname(
        &self,
        packet: &[u8],
        prefix: Vec<Record>,
        target: &str,
        over_tcp: bool,
        limit: usize,
    ) -> Option<Vec<u8>> {
        let query = Message::parse(packet).ok()?;
        let qtype = query.questions.first()?.qtype;
        let sub = Message {
            id: query.id,
            flags: 0x0100, // RD
            questions: vec![Question {
                name: target.to_string(),
                qtype,
                qclass: CLASS_IN,
            }],
            answers: Vec::new(),
            authority: Vec::new(),
            edns_udp_size: None,
        };
        let upstream_reply = forward(&self.upstreams, &sub.encode(UDP_LIMIT), over_tcp).await;
        let (code, mut rest) = match upstream_reply.as_deref().map(Message::parse) {
            Some(Ok(m)) => (rcode(m.flags), m.answers),
            _ => (RCODE_NOERROR, Vec::new()),
        };
        // Keep only what we can re-encode faithfully.
        rest.retain(|r| !matches!(r.data, RData::Soa { .. }));
        let mut answers = prefix;
        answers.append(&mut rest);
        let reply = Message {
            id: query.id,
            flags: reply_flags(query.flags, false, code),
            questions: query.questions,
            answers,
            authority: Vec::new(),
            edns_udp_size: None,
        };
        Some(reply.encode(limit))
    }
}

fn servfail(packet: &[u8]) -> Option<Message> {
    let q = Message::parse(packet).ok()?;
    Some(error_reply(q.id, q.flags, q.questions, RCODE_SERVFAIL))
}

/// The cluster DNS server.
pub struct DnsServer;

/// A running server; dropping it stops the listeners.
pub struct DnsHandle {
    state: Arc<State>,
    local_addrs: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds UDP and TCP on every address (TCP takes UDP's port, so port 0 works in tests) and
    /// starts answering. Upstreams equal to one of our own addresses are dropped (no loops).
    pub async fn start(
        bind: Vec<SocketAddr>,
        domain: &str,
        upstreams: Vec<SocketAddr>,
    ) -> Result<DnsHandle, DnsError> {
        if bind.is_empty() {
            return Err(DnsError::NoBind);
        }
        let mut sockets = Vec::new();
        for addr in bind {
            sockets.push(bind_pair(addr).await?);
        }
        let local_addrs: Vec<SocketAddr> = sockets.iter().map(|(_, _, a)| *a).collect();
        let upstreams = upstreams
            .into_iter()
            .filter(|u| !local_addrs.contains(u))
            .collect();
        let state = Arc::new(State {
            records: RwLock::new(Arc::new(Records::new(domain))),
            upstreams,
        });
        let mut tasks = Vec::new();
        for (udp, tcp, addr) in sockets {
            tracing::info!(%addr, "cluster DNS listening");
            tasks.push(tokio::spawn(serve_udp(Arc::new(udp), Arc::clone(&state))));
            tasks.push(tokio::spawn(serve_tcp(tcp, Arc::clone(&state))));
        }
        Ok(DnsHandle {
            state,
            local_addrs,
            tasks,
        })
    }
}

async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener, SocketAddr), DnsError> {
    let mut attempts = 0;
    loop {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::Bind { addr, source })?;
        let local = udp
            .local_addr()
            .map_err(|source| DnsError::Bind { addr, source })?;
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((udp, tcp, local)),
            // With port 0 the UDP port may be taken for TCP; pick another.
            Err(_) if addr.port() == 0 && attempts < 10 => attempts += 1,
            Err(source) => {
                return Err(DnsError::Bind {
                    addr: local,
                    source,
                })
            }
        }
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, state: Arc<State>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors from earlier sends surface here; they are not fatal.
                tracing::debug!(error = %e, "DNS UDP receive");
                continue;
            }
        };
        let packet = buf[..n].to_vec();
        let socket = Arc::clone(&socket);
        let state = Arc::clone(&state);
        // Each query on its own task: a slow upstream must not hold up cluster names.
        tokio::spawn(async move {
            if let Some(reply) = state.respond(&packet, false).await {
                if let Err(e) = socket.send_to(&reply, peer).await {
                    tracing::debug!(%peer, error = %e, "DNS UDP send");
                }
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, state: Arc<State>) {
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "DNS TCP accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok(Ok(Some(packet))) =
                tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await
            {
                let Some(reply) = state.respond(&packet, true).await else {
                    break;
                };
                if write_framed(&mut stream, &reply).await.is_err() {
                    break;
                }
            }
        });
    }
}

impl DnsHandle {
    /// Replaces every record with what these objects describe.
    pub fn update(&self, services: &[Value], endpoint_slices: &[Value], pods: &[Value]) {
        let domain = self.state.records().domain.clone();
        let fresh = Arc::new(Records::build(&domain, services, endpoint_slices, pods));
        match self.state.records.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
    }

    /// The addresses actually bound (ports filled in when 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    pub fn shutdown(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for DnsHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

// ---------------------------------------------------------------------------------------------
// resolv.conf

/// Nameservers of a resolv.conf, port 53.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let ip: std::net::IpAddr = words.next()?.split('%').next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// Search domains of a resolv.conf (`search` or the older `domain`).
pub fn search_from_resolv_conf(text: &str) -> Vec<String> {
    let mut search = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("search") | Some("domain") => {
                search = words.map(str::to_string).collect();
            }
            _ => {}
        }
    }
    search
}

/// The host's upstream resolvers from /etc/resolv.conf.
pub fn host_upstreams() -> Result<Vec<SocketAddr>, DnsError> {
    let path = "/etc/resolv.conf";
    let text = std::fs::read_to_string(path).map_err(|source| DnsError::ReadResolvConf {
        path: path.to_string(),
        source,
    })?;
    Ok(upstreams_from_resolv_conf(&text))
}

/// A pod's /etc/resolv.conf for dnsPolicy ClusterFirst: the cluster search path, then the
/// host's search domains (as the kubelet appends them), capped at glibc's old limit of six.
pub fn resolv_conf(
    dns_ip: Ipv4Addr,
    namespace: &str,
    domain: &str,
    host_search: &[String],
) -> String {
    let domain = domain.trim_end_matches('.');
    let mut search = vec![
        format!("{namespace}.svc.{domain}"),
        format!("svc.{domain}"),
        domain.to_string(),
    ];
    for extra in host_search {
        if !search.contains(extra) && search.len() < 6 {
            search.push(extra.clone());
        }
    }
    format!(
        "search {}\nnameserver {dns_ip}\noptions ndots:5\n",
        search.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        Message {
            id,
            flags: 0x0100,
            questions: vec![Question {
                name: name.to_string(),
                qtype,
                qclass: CLASS_IN,
            }],
            answers: Vec::new(),
            authority: Vec::new(),
            edns_udp_size: None,
        }
        .encode(UDP_LIMIT)
    }

    fn sample_objects() -> (Vec<Value>, Vec<Value>, Vec<Value>) {
        let services = vec![
            json!({"metadata": {"name": "web", "namespace": "default"},
                   "spec": {"clusterIP": "10.43.0.20", "type": "ClusterIP",
                            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
            json!({"metadata": {"name": "db", "namespace": "prod"},
                   "spec": {"clusterIP": "None",
                            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}}),
            json!({"metadata": {"name": "ext", "namespace": "default"},
                   "spec": {"type": "ExternalName", "externalName": "example.org"}}),
        ];
        let slices = vec![json!({
            "metadata": {"name": "db-abc", "namespace": "prod",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.0.7"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.42.1.8"], "conditions": {"ready": true}},
                {"addresses": ["10.42.1.9"], "conditions": {"ready": false}},
            ]
        })];
        let pods = vec![json!({"metadata": {"name": "p", "namespace": "default"},
                               "status": {"podIP": "10.42.0.5"}})];
        (services, slices, pods)
    }

    fn records() -> Records {
        let (s, e, p) = sample_objects();
        Records::build("cluster.local", &s, &e, &p)
    }

    fn ask(records: &Records, name: &str, qtype: u16) -> Message {
        match answer(records, &query(7, name, qtype)) {
            Decision::Reply(m) => Message::parse(&m.encode(UDP_LIMIT)).unwrap(),
            other => panic!("expected a reply for {name}, got {other:?}"),
        }
    }

    fn a_records(m: &Message) -> Vec<Ipv4Addr> {
        let mut ips: Vec<Ipv4Addr> = m
            .answers
            .iter()
            .filter_map(|r| match r.data {
                RData::A(ip) => Some(ip),
                _ => None,
            })
            .collect();
        ips.sort();
        ips
    }

    #[test]
    fn encode_then_parse_round_trips() {
        let msg = Message {
            id: 0xbeef,
            flags: reply_flags(0x0100, true, RCODE_NOERROR),
            questions: vec![Question {
                name: "web.default.svc.cluster.local".into(),
                qtype: TYPE_A,
                qclass: CLASS_IN,
            }],
            answers: vec![
                Record {
                    name: "web.default.svc.cluster.local".into(),
                    ttl: 5,
                    data: RData::A(Ipv4Addr::new(10, 43, 0, 20)),
                },
                Record {
                    name: "x.cluster.local".into(),
                    ttl: 5,
                    data: RData::Srv {
                        priority: 0,
                        weight: 100,
                        port: 80,
                        target: "web.default.svc.cluster.local".into(),
                    },
                },
                Record {
                    name: "20.0.43.10.in-addr.arpa".into(),
                    ttl: 5,
                    data: RData::Ptr("web.default.svc.cluster.local".into()),
                },
            ],
            authority: vec![],
            edns_udp_size: None,
        };
        let bytes = msg.encode(UDP_LIMIT);
        let back = Message::parse(&bytes).unwrap();
        assert_eq!(back, msg);
        assert!(flag_qr(back.flags));
        assert_eq!(rcode(back.flags), RCODE_NOERROR);
    }

    #[test]
    fn compressed_names_are_followed() {
        // Header, question "a.example.org", answer whose name is a pointer to offset 12 and
        // whose CNAME rdata is "www" + pointer to "example.org" (offset 14).
        let mut p = vec![0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        p.extend_from_slice(b"\x01a\x07example\x03org\x00");
        p.extend_from_slice(&[0, 1, 0, 1]);
        p.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 6]);
        p.extend_from_slice(b"\x03www\xc0\x0e");
        let m = Message::parse(&p).unwrap();
        assert_eq!(m.questions[0].name, "a.example.org");
        assert_eq!(m.answers[0].name, "a.example.org");
        assert_eq!(m.answers[0].data, RData::Cname("www.example.org".into()));
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        let good = query(1, "web.default.svc.cluster.local", TYPE_A);
        for cut in 0..good.len() {
            assert!(Message::parse(&good[..cut]).is_err(), "cut at {cut} parsed");
        }
        // A pointer to itself, and a forward pointer.
        let mut looped = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
        assert_eq!(Message::parse(&looped), Err(WireError::PointerLoop));
        looped[13] = 40;
        assert_eq!(Message::parse(&looped), Err(WireError::PointerLoop));
        // Reserved label type 0x40.
        let reserved = vec![
            0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x41, b'a', 0, 0, 1, 0, 1,
        ];
        assert!(Message::parse(&reserved).is_err());
        // Over-long name: 5 labels of 63 bytes.
        let mut long = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for _ in 0..5 {
            long.push(63);
            long.extend_from_slice(&[b'x'; 63]);
        }
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(Message::parse(&long).is_err());
        // The server answers FORMERR with the id when it has a header, and drops the rest.
        let bad = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0];
        match answer(&records(), &bad) {
            Decision::Reply(m) => {
                assert_eq!(m.id, 0x1234);
                assert_eq!(rcode(m.flags), RCODE_FORMERR);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(answer(&records(), &[1]), Decision::Drop));
        // Fuzz-ish: every byte flipped in a valid query must not panic.
        for i in 0..good.len() {
            let mut p = good.clone();
            p[i] ^= 0xff;
            let _ = answer(&records(), &p);
        }
    }

    #[test]
    fn truncation_sets_tc_and_keeps_the_packet_valid() {
        let answers = (0..100)
            .map(|i| Record {
                name: "many.cluster.local".into(),
                ttl: 5,
                data: RData::A(Ipv4Addr::new(10, 42, 0, i)),
            })
            .collect();
        let msg = Message {
            id: 1,
            flags: 0x8180,
            questions: vec![Question {
                name: "many.cluster.local".into(),
                qtype: TYPE_A,
                qclass: CLASS_IN,
            }],
            answers,
            authority: vec![],
            edns_udp_size: None,
        };
        let bytes = msg.encode(UDP_LIMIT);
        assert!(bytes.len() <= UDP_LIMIT);
        let back = Message::parse(&bytes).unwrap();
        assert!(flag_tc(back.flags));
        assert!(!back.answers.is_empty() && back.answers.len() < 100);
    }

    #[test]
    fn cluster_names_resolve() {
        let r = records();
        let m = ask(&r, "web.default.svc.cluster.local", TYPE_A);
        assert_eq!(rcode(m.flags), RCODE_NOERROR);
        assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 43, 0, 20)]);
        assert_eq!(m.answers[0].ttl, TTL);
        // Case-insensitive, answered in the client's case.
        let m = ask(&r, "WEB.default.svc.cluster.local", TYPE_A);
        assert_eq!(m.answers[0].name, "WEB.default.svc.cluster.local");
        // Headless: ready endpoints only, plus per-hostname names.
        let m = ask(&r, "db.prod.svc.cluster.local", TYPE_A);
        assert_eq!(
            a_records(&m),
            vec![Ipv4Addr::new(10, 42, 0, 7), Ipv4Addr::new(10, 42, 1, 8)]
        );
        let m = ask(&r, "db-0.db.prod.svc.cluster.local", TYPE_A);
        assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 42, 0, 7)]);
        // SRV.
        let m = ask(&r, "_http._tcp.web.default.svc.cluster.local", TYPE_SRV);
        assert_eq!(
            m.answers[0].data,
            RData::Srv {
                priority: 0,
                weight: 100,
                port: 80,
                target: "web.default.svc.cluster.local".into()
            }
        );
        let m = ask(&r, "_pg._tcp.db.prod.svc.cluster.local", TYPE_SRV);
        assert_eq!(m.answers.len(), 2);
        // PTR.
        let m = ask(&r, "20.0.43.10.in-addr.arpa", TYPE_PTR);
        assert_eq!(
            m.answers[0].data,
            RData::Ptr("web.default.svc.cluster.local".into())
        );
        // Pods.
        let m = ask(&r, "10-42-0-5.default.pod.cluster.local", TYPE_A);
        assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 42, 0, 5)]);
        // AAAA of a cluster name: NOERROR, no answers, SOA for negative caching.
        let m = ask(&r, "web.default.svc.cluster.local", TYPE_AAAA);
        assert_eq!(rcode(m.flags), RCODE_NOERROR);
        assert!(m.answers.is_empty());
        assert_eq!(m.authority.len(), 1);
        // Unknown names in the domain (search-path expansions): NXDOMAIN.
        let m = ask(&r, "google.com.default.svc.cluster.local", TYPE_A);
        assert_eq!(rcode(m.flags), RCODE_NXDOMAIN);
        // Ancestors exist.
        let m = ask(&r, "svc.cluster.local", TYPE_A);
        assert_eq!(rcode(m.flags), RCODE_NOERROR);
        // Outside names are forwarded; ExternalName chases its target upstream.
        assert!(
            matches!(answer(&r, &query(1, "example.com", TYPE_A)), Decision::Forward { ref prefix, .. } if prefix.is_empty())
        );
        match answer(&r, &query(1, "ext.default.svc.cluster.local", TYPE_A)) {
            Decision::Forward { prefix, name } => {
                assert_eq!(name, "example.org");
                assert_eq!(prefix[0].data, RData::Cname("example.org".into()));
            }
            other => panic!("{other:?}"),
        }
        // Unknown reverse names are someone else's.
        assert!(matches!(
            answer(&r, &query(1, "1.1.168.192.in-addr.arpa", TYPE_PTR)),
            Decision::Forward { .. }
        ));
    }

    #[test]
    fn resolv_conf_for_pods() {
        let text = resolv_conf(
            Ipv4Addr::new(10, 43, 0, 10),
            "team",
            "cluster.local",
            &["corp.example".into()],
        );
        assert_eq!(
            text,
            "search team.svc.cluster.local svc.cluster.local cluster.local corp.example\nnameserver 10.43.0.10\noptions ndots:5\n"
        );
        let host = "# comment\nnameserver 10.255.255.53\nnameserver fe80::1%eth0\nsearch a.b c.d\noptions x\n";
        assert_eq!(
            upstreams_from_resolv_conf(host),
            vec![
                "10.255.255.53:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(
            search_from_resolv_conf(host),
            vec!["a.b".to_string(), "c.d".to_string()]
        );
    }

    async fn udp_ask(server: SocketAddr, name: &str, qtype: u16) -> Message {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(&query(42, name, qtype), server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let m = Message::parse(&buf[..n]).unwrap();
        assert_eq!(m.id, 42);
        m
    }

    async fn tcp_ask(server: SocketAddr, name: &str, qtype: u16) -> Message {
        let mut stream = TcpStream::connect(server).await.unwrap();
        write_framed(&mut stream, &query(43, name, qtype))
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), read_framed(&mut stream))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        Message::parse(&reply).unwrap()
    }

    #[tokio::test]
    async fn server_answers_over_udp_and_tcp_and_forwards() {
        let local = "127.0.0.1:0".parse().unwrap();
        // The "upstream" is a second instance with its own domain.
        let upstream = DnsServer::start(vec![local], "upstream.test", vec![])
            .await
            .unwrap();
        upstream.update(
            &[json!({"metadata": {"name": "far", "namespace": "x"}, "spec": {"clusterIP": "10.99.0.1"}})],
            &[],
            &[],
        );
        let upstream_addr = upstream.local_addrs()[0];
        let server = DnsServer::start(vec![local], "cluster.local", vec![upstream_addr])
            .await
            .unwrap();
        let (s, e, p) = sample_objects();
        server.update(&s, &e, &p);
        let addr = server.local_addrs()[0];

        let m = udp_ask(addr, "web.default.svc.cluster.local", TYPE_A).await;
        assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 43, 0, 20)]);
        let m = tcp_ask(addr, "db.prod.svc.cluster.local", TYPE_A).await;
        assert_eq!(m.id, 43);
        assert_eq!(a_records(&m).len(), 2);
        let m = udp_ask(addr, "nope.default.svc.cluster.local", TYPE_A).await;
        assert_eq!(rcode(m.flags), RCODE_NXDOMAIN);

        // Forwarded over UDP and over TCP.
        let m = udp_ask(addr, "far.x.svc.upstream.test", TYPE_A).await;
        assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 99, 0, 1)]);
        let m = tcp_ask(addr, "far.x.svc.upstream.test", TYPE_A).await;
        assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 99, 0, 1)]);

        // Updates replace records.
        server.update(&[], &[], &[]);
        let m = udp_ask(addr, "web.default.svc.cluster.local", TYPE_A).await;
        assert_eq!(rcode(m.flags), RCODE_NXDOMAIN);

        // With the upstream gone, forwarding fails as SERVFAIL rather than silence.
        drop(upstream);
        let m = udp_ask(addr, "far.x.svc.upstream.test", TYPE_A).await;
        assert_eq!(rcode(m.flags), RCODE_SERVFAIL);
    }
}
