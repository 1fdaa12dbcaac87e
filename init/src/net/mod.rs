//! Network bring-up for PID 1: loopback, picking the wired interface, DHCP or
//! static IPv4 configuration, and `/etc/resolv.conf`.
//!
//! Everything is done with plain ioctls on an `AF_INET` datagram socket and one
//! UDP socket for DHCP, so no netlink library or async runtime is linked in.
//! Renewal is not done here yet; [`Lease::lease_secs`] is returned so a later
//! change can renew.

mod dhcp;
mod iface;

use std::fmt::Write as _;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Fixed IPv4 configuration for one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticConfig {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

/// How the node's wired interface is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkConfig {
    Dhcp,
    Static(StaticConfig),
    /// Leave the interface alone (down).
    Off,
}

/// What a DHCP server granted and what has been applied to the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub interface: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// Domain name (option 15), usable as the resolv.conf search domain.
    pub domain: Option<String>,
    /// Lease time in seconds; `u32::MAX` means infinite (also used when the
    /// server sent none).
    pub lease_secs: u32,
    /// The DHCP server identifier (option 54).
    pub server: Ipv4Addr,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A system call on an interface failed; `step` says what was being done.
    #[error("{iface}: {step}: {error}")]
    Io {
        iface: String,
        step: &'static str,
        error: io::Error,
    },
    #[error("reading {}: {error}", path.display())]
    Sysfs { path: PathBuf, error: io::Error },
    #[error("{iface}: invalid network configuration: {reason}")]
    InvalidConfig { iface: String, reason: String },
    #[error("{iface}: no DHCP offer after {waited:?}")]
    NoOffer { iface: String, waited: Duration },
    #[error("{iface}: no DHCP acknowledgement from {server} for {offered} after {waited:?}")]
    NoAck {
        iface: String,
        server: Ipv4Addr,
        offered: Ipv4Addr,
        waited: Duration,
    },
    #[error("{iface}: DHCP server {server} refused {requested}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Nak {
        iface: String,
        server: Ipv4Addr,
        requested: Ipv4Addr,
        message: Option<String>,
    },
    #[error("{iface}: unusable DHCP lease from {server}: {reason}")]
    BadLease {
        iface: String,
        server: Ipv4Addr,
        reason: String,
    },
}

const SYS_CLASS_NET: &str = "/sys/class/net";

/// Brings `lo` up with 127.0.0.1/8.
pub fn bring_up_loopback() -> Result<(), NetError> {
    let ctl = iface::Ctl::open("lo")?;
    ctl.set_up("lo")?;
    // The kernel adds 127.0.0.1/8 itself when lo comes up; setting it again is a
    // no-op then and a fix if it did not.
    ctl.set_address("lo", Ipv4Addr::LOCALHOST)?;
    ctl.set_netmask("lo", prefix_to_netmask(8))?;
    Ok(())
}

/// The first wired Ethernet interface by name, from `/sys/class/net`.
///
/// Skips `lo`, virtual devices (no `device` link), wireless devices and
/// anything whose `type` is not `ARPHRD_ETHER`.
pub fn first_ethernet_interface() -> Result<Option<String>, NetError> {
    iface::first_ethernet_interface_in(Path::new(SYS_CLASS_NET))
}

/// Configures `iface` as `cfg` says. Returns the lease for DHCP, `None` for
/// static configuration and `Off` (which leaves the interface untouched).
/// `hostname` is sent to the DHCP server (option 12); `timeout` bounds the
/// whole DHCP exchange. DNS is not applied here: pass `Lease::dns` or
/// `StaticConfig::dns` to [`write_resolv_conf`].
pub fn configure(
    iface: &str,
    cfg: &NetworkConfig,
    hostname: &str,
    timeout: Duration,
) -> Result<Option<Lease>, NetError> {
    match cfg {
        NetworkConfig::Off => Ok(None),
        NetworkConfig::Static(s) => {
            validate_static(iface, s)?;
            let ctl = iface::Ctl::open(iface)?;
            ctl.set_up(iface)?;
            ctl.apply(iface, s.address, s.prefix_len, s.gateway)?;
            Ok(None)
        }
        NetworkConfig::Dhcp => {
            let ctl = iface::Ctl::open(iface)?;
            ctl.set_up(iface)?;
            let mac = iface::read_mac(Path::new(SYS_CLASS_NET), iface)?;
            let lease = dhcp::obtain_lease(iface, mac, hostname, timeout)?;
            ctl.apply(iface, lease.address, lease.prefix_len, lease.gateway)?;
            Ok(Some(lease))
        }
    }
}

/// Writes a resolv.conf naming `dns` (at most the three the resolver uses)
/// and the `search` domains. Written to a temporary file and renamed.
pub fn write_resolv_conf(path: &Path, dns: &[Ipv4Addr], search: &[String]) -> io::Result<()> {
    let content = resolv_conf(dns, search);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

fn resolv_conf(dns: &[Ipv4Addr], search: &[String]) -> String {
    let mut out = String::from("# written by cairn-init\n");
    let search: Vec<&str> = search
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
        .collect();
    if !search.is_empty() {
        let _ = writeln!(out, "search {}", search.join(" "));
    }
    // glibc and musl read at most three nameserver lines (MAXNS).
    for ns in dns.iter().take(3) {
        let _ = writeln!(out, "nameserver {ns}");
    }
    out
}

fn validate_static(iface: &str, s: &StaticConfig) -> Result<(), NetError> {
    let invalid = |reason: String| NetError::InvalidConfig {
        iface: iface.to_string(),
        reason,
    };
    if s.prefix_len > 32 {
        return Err(invalid(format!("prefix length {} > 32", s.prefix_len)));
    }
    if s.address.is_unspecified() || s.address.is_broadcast() || s.address.is_multicast() {
        return Err(invalid(format!(
            "address {} is not a host address",
            s.address
        )));
    }
    if let Some(gw) = s.gateway {
        if gw.is_unspecified() || gw.is_broadcast() || gw.is_multicast() || gw == s.address {
            return Err(invalid(format!("gateway {gw} is not usable")));
        }
    }
    Ok(())
}

/// `24` → `255.255.255.0`. Lengths above 32 are clamped to 32.
pub(crate) fn prefix_to_netmask(prefix_len: u8) -> Ipv4Addr {
    let len = u32::from(prefix_len.min(32));
    let bits = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ipv4Addr::from(bits)
}

/// `255.255.255.0` → `Some(24)`; `None` for a non-contiguous mask.
pub(crate) fn netmask_to_prefix(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let len = bits.leading_ones();
    if bits.checked_shl(len).unwrap_or(0) == 0 {
        u8::try_from(len).ok()
    } else {
        None
    }
}

/// Whether `a` and `b` are in the same `prefix_len` network.
pub(crate) fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix_len: u8) -> bool {
    let mask = u32::from(prefix_to_netmask(prefix_len));
    u32::from(a) & mask == u32::from(b) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_netmask_round_trip() {
        for len in 0..=32u8 {
            let mask = prefix_to_netmask(len);
            assert_eq!(netmask_to_prefix(mask), Some(len), "len {len} mask {mask}");
        }
        assert_eq!(prefix_to_netmask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(prefix_to_netmask(8), Ipv4Addr::new(255, 0, 0, 0));
        assert_eq!(prefix_to_netmask(20), Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(prefix_to_netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(prefix_to_netmask(31), Ipv4Addr::new(255, 255, 255, 254));
        assert_eq!(prefix_to_netmask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(prefix_to_netmask(40), Ipv4Addr::new(255, 255, 255, 255));
    }

    #[test]
    fn non_contiguous_netmask_is_rejected() {
        assert_eq!(netmask_to_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(netmask_to_prefix(Ipv4Addr::new(0, 0, 0, 255)), None);
        assert_eq!(netmask_to_prefix(Ipv4Addr::new(255, 255, 255, 1)), None);
    }

    #[test]
    fn subnet_membership() {
        let a = Ipv4Addr::new(10, 0, 2, 15);
        assert!(same_subnet(a, Ipv4Addr::new(10, 0, 2, 2), 24));
        assert!(!same_subnet(a, Ipv4Addr::new(10, 0, 3, 2), 24));
        assert!(same_subnet(a, Ipv4Addr::new(10, 0, 3, 2), 16));
        assert!(same_subnet(a, Ipv4Addr::new(192, 168, 0, 1), 0));
    }

    #[test]
    fn resolv_conf_content() {
        let dns = [
            Ipv4Addr::new(10, 0, 2, 3),
            Ipv4Addr::new(1, 1, 1, 1),
            Ipv4Addr::new(8, 8, 8, 8),
            Ipv4Addr::new(9, 9, 9, 9),
        ];
        let search = vec![
            "lan".to_string(),
            " ".to_string(),
            "example.org".to_string(),
        ];
        assert_eq!(
            resolv_conf(&dns, &search),
            "# written by cairn-init\n\
             search lan example.org\n\
             nameserver 10.0.2.3\n\
             nameserver 1.1.1.1\n\
             nameserver 8.8.8.8\n"
        );
        assert_eq!(resolv_conf(&[], &[]), "# written by cairn-init\n");
    }

    #[test]
    fn resolv_conf_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "old").unwrap();
        write_resolv_conf(&path, &[Ipv4Addr::new(10, 0, 2, 3)], &[]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "# written by cairn-init\nnameserver 10.0.2.3\n"
        );
        assert!(!dir.path().join("resolv.conf.tmp").exists());
    }

    #[test]
    fn static_config_validation() {
        let ok = StaticConfig {
            address: Ipv4Addr::new(192, 168, 1, 10),
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(192, 168, 1, 1)),
            dns: vec![],
        };
        assert!(validate_static("eth0", &ok).is_ok());
        let bad_prefix = StaticConfig {
            prefix_len: 33,
            ..ok.clone()
        };
        let err = validate_static("eth0", &bad_prefix).unwrap_err();
        assert_eq!(
            err.to_string(),
            "eth0: invalid network configuration: prefix length 33 > 32"
        );
        let bad_addr = StaticConfig {
            address: Ipv4Addr::UNSPECIFIED,
            ..ok.clone()
        };
        assert!(validate_static("eth0", &bad_addr).is_err());
        let bad_gw = StaticConfig {
            gateway: Some(ok.address),
            ..ok
        };
        assert!(validate_static("eth0", &bad_gw).is_err());
    }

    /// Real bring-up in a throwaway network namespace; needs root. With
    /// libslirp (the same DHCP server as QEMU's user network), and sysfs
    /// remounted so `/sys/class/net` shows the namespace's interfaces:
    ///
    /// ```sh
    /// unshare -n sleep 300 &
    /// ns=$!; slirp4netns $ns tap0 & sleep 1
    /// CAIRN_NET_SMOKE_IFACE=tap0 nsenter -t $ns -n unshare -m sh -c \
    ///   'mount -t sysfs sysfs /sys && exec target/debug/deps/cairn_init-HASH \
    ///    --ignored --nocapture net_smoke'
    /// ```
    ///
    /// `CAIRN_NET_SMOKE_MODE=static` applies 10.0.2.20/24 via 10.0.2.2
    /// instead; `=silent` expects "no DHCP offer" after 3 s (use an interface
    /// without a server, e.g. a dummy).
    #[test]
    #[ignore = "needs root, a network namespace and a DHCP server"]
    fn net_smoke() {
        let Ok(iface) = std::env::var("CAIRN_NET_SMOKE_IFACE") else {
            eprintln!("CAIRN_NET_SMOKE_IFACE not set; skipping");
            return;
        };
        let mode = std::env::var("CAIRN_NET_SMOKE_MODE").unwrap_or_default();
        bring_up_loopback().unwrap();
        match mode.as_str() {
            "static" => {
                let cfg = NetworkConfig::Static(StaticConfig {
                    address: Ipv4Addr::new(10, 0, 2, 20),
                    prefix_len: 24,
                    gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
                    dns: vec![],
                });
                let hostname = "cairn-smoke";
                let lease = configure(&iface, &cfg, hostname, Duration::from_secs(1)).unwrap();
                assert_eq!(lease, None);
            }
            "silent" => {
                let started = std::time::Instant::now();
                let err = configure(
                    &iface,
                    &NetworkConfig::Dhcp,
                    "cairn-smoke",
                    Duration::from_secs(3),
                )
                .unwrap_err();
                eprintln!("{err} (after {:?})", started.elapsed());
                assert!(matches!(err, NetError::NoOffer { .. }), "{err}");
            }
            _ => {
                let lease = configure(
                    &iface,
                    &NetworkConfig::Dhcp,
                    "cairn-smoke",
                    Duration::from_secs(10),
                )
                .unwrap()
                .unwrap();
                eprintln!("{lease:?}");
                assert_eq!(lease.interface, iface);
                assert!(!lease.address.is_unspecified());
            }
        }
    }

    #[test]
    fn error_messages_name_interface_and_step() {
        let e = NetError::NoOffer {
            iface: "eth0".into(),
            waited: Duration::from_secs(10),
        };
        assert_eq!(e.to_string(), "eth0: no DHCP offer after 10s");
        let e = NetError::Nak {
            iface: "eth0".into(),
            server: Ipv4Addr::new(10, 0, 2, 2),
            requested: Ipv4Addr::new(10, 0, 2, 15),
            message: Some("wrong network".into()),
        };
        assert_eq!(
            e.to_string(),
            "eth0: DHCP server 10.0.2.2 refused 10.0.2.15: wrong network"
        );
        let e = NetError::Io {
            iface: "eth0".into(),
            step: "bring interface up",
            error: io::Error::from_raw_os_error(libc::ENODEV),
        };
        assert!(e.to_string().starts_with("eth0: bring interface up: "));
    }
}
