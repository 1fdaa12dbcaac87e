//! Interface selection from sysfs and IPv4 configuration through the classic
//! `SIOCSIF*` / `SIOCADDRT` ioctls on an `AF_INET` datagram socket.

use std::ffi::{c_char, c_short, c_ulong, c_ushort};
use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::{prefix_to_netmask, same_subnet, NetError};

/// `/sys/class/net/*` under `root`: the first (by name) interface that is not
/// `lo`, has a `device` link (so is backed by hardware), is not wireless and
/// whose `type` is `ARPHRD_ETHER`.
pub(super) fn first_ethernet_interface_in(root: &Path) -> Result<Option<String>, NetError> {
    let sysfs_err = |error| NetError::Sysfs {
        path: root.to_path_buf(),
        error,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root).map_err(sysfs_err)? {
        let entry = entry.map_err(sysfs_err)?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name == "lo" {
            continue;
        }
        let dir = root.join(&name);
        // Virtual devices (bridges, veth, dummy, tun, ...) have no `device` link.
        if dir.join("device").symlink_metadata().is_err() {
            continue;
        }
        // Wi-Fi is ARPHRD_ETHER too, but needs a supplicant before DHCP works.
        if dir.join("wireless").exists() || dir.join("phy80211").exists() {
            continue;
        }
        let is_ether = std::fs::read_to_string(dir.join("type"))
            .ok()
            .and_then(|t| t.trim().parse::<u16>().ok())
            == Some(libc::ARPHRD_ETHER);
        if is_ether {
            names.push(name);
        }
    }
    names.sort();
    Ok(names.into_iter().next())
}

/// The interface's hardware address from `root/IF/address`.
pub(super) fn read_mac(root: &Path, iface: &str) -> Result<[u8; 6], NetError> {
    let path = root.join(iface).join("address");
    let text = std::fs::read_to_string(&path).map_err(|error| NetError::Io {
        iface: iface.to_string(),
        step: "read MAC address",
        error,
    })?;
    parse_mac(&text).ok_or_else(|| NetError::Io {
        iface: iface.to_string(),
        step: "read MAC address",
        error: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a MAC address: {:?}", path.display(), text.trim()),
        ),
    })
}

/// `"52:54:00:12:34:56\n"` → bytes. Rejects anything but six hex pairs.
pub(super) fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    match parts.next() {
        None => Some(mac),
        Some(_) => None,
    }
}

/// `struct rtentry` from `<linux/route.h>`. Defined here because the `libc`
/// crate only has it for musl, and tests run against glibc.
#[repr(C)]
struct RtEntry {
    rt_pad1: c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: c_ushort,
    rt_pad2: c_short,
    rt_pad3: c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: c_short,
    rt_dev: *mut c_char,
    rt_mtu: c_ulong,
    rt_window: c_ulong,
    rt_irtt: c_ushort,
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    // SAFETY: sockaddr and sockaddr_in are plain C structs of the same size
    // (16 bytes); all-zero is valid for both.
    let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_addr.s_addr = u32::from(addr).to_be();
    // SAFETY: same size, both repr(C) plain data.
    unsafe { mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// An `AF_INET` datagram socket used only as an ioctl handle.
pub(super) struct Ctl {
    fd: OwnedFd,
}

impl Ctl {
    pub(super) fn open(iface: &str) -> Result<Ctl, NetError> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io_err(iface, "open control socket"));
        }
        // SAFETY: fd is a freshly created descriptor nobody else owns.
        Ok(Ctl {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn ifreq(iface: &str, step: &'static str) -> Result<libc::ifreq, NetError> {
        let bytes = iface.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(NetError::Io {
                iface: iface.to_string(),
                step,
                error: io::Error::new(io::ErrorKind::InvalidInput, "invalid interface name"),
            });
        }
        // SAFETY: ifreq is plain C data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
            *dst = *src as c_char;
        }
        Ok(req)
    }

    fn ioctl<T>(
        &self,
        iface: &str,
        step: &'static str,
        request: c_ulong,
        arg: &mut T,
    ) -> Result<(), NetError> {
        // SAFETY: `arg` is the struct this request expects (ifreq or rtentry),
        // valid for the duration of the call. The request type is c_ulong on
        // glibc and c_int on musl, hence the cast.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), request as _, arg as *mut T) };
        if rc < 0 {
            Err(io_err(iface, step))
        } else {
            Ok(())
        }
    }

    pub(super) fn set_up(&self, iface: &str) -> Result<(), NetError> {
        const STEP: &str = "bring interface up";
        let mut req = Self::ifreq(iface, STEP)?;
        self.ioctl(iface, "read interface flags", libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled in the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        let up = libc::IFF_UP as c_short;
        if flags & up != 0 {
            return Ok(());
        }
        req.ifr_ifru.ifru_flags = flags | up;
        self.ioctl(iface, STEP, libc::SIOCSIFFLAGS, &mut req)
    }

    fn set_sockaddr(
        &self,
        iface: &str,
        step: &'static str,
        request: c_ulong,
        addr: Ipv4Addr,
    ) -> Result<(), NetError> {
        let mut req = Self::ifreq(iface, step)?;
        req.ifr_ifru.ifru_addr = sockaddr_in(addr);
        self.ioctl(iface, step, request, &mut req)
    }

    pub(super) fn set_address(&self, iface: &str, addr: Ipv4Addr) -> Result<(), NetError> {
        self.set_sockaddr(iface, "set address", libc::SIOCSIFADDR, addr)
    }

    pub(super) fn set_netmask(&self, iface: &str, mask: Ipv4Addr) -> Result<(), NetError> {
        self.set_sockaddr(iface, "set netmask", libc::SIOCSIFNETMASK, mask)
    }

    fn set_broadcast(&self, iface: &str, brd: Ipv4Addr) -> Result<(), NetError> {
        self.set_sockaddr(iface, "set broadcast address", libc::SIOCSIFBRDADDR, brd)
    }

    /// Adds a route to `dst/mask` via `gateway` (or directly on the link if
    /// `None`) out of `iface`. An existing identical route is not an error.
    fn add_route(
        &self,
        iface: &str,
        step: &'static str,
        dst: Ipv4Addr,
        mask: Ipv4Addr,
        gateway: Option<Ipv4Addr>,
    ) -> Result<(), NetError> {
        let mut dev = [0 as c_char; libc::IFNAMSIZ];
        for (d, s) in dev.iter_mut().zip(Self::ifreq(iface, step)?.ifr_name) {
            *d = s;
        }
        let mut flags = libc::RTF_UP;
        if gateway.is_some() {
            flags |= libc::RTF_GATEWAY;
        }
        if mask == Ipv4Addr::BROADCAST {
            flags |= libc::RTF_HOST;
        }
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr_in(dst),
            rt_gateway: sockaddr_in(gateway.unwrap_or(Ipv4Addr::UNSPECIFIED)),
            rt_genmask: sockaddr_in(mask),
            rt_flags: flags,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: dev.as_mut_ptr(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        match self.ioctl(iface, step, libc::SIOCADDRT, &mut rt) {
            Err(NetError::Io { error, .. }) if error.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Sets `address/prefix_len` (and the broadcast address) and, if given,
    /// the default route via `gateway`. The interface must be up.
    pub(super) fn apply(
        &self,
        iface: &str,
        address: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
    ) -> Result<(), NetError> {
        let mask = prefix_to_netmask(prefix_len);
        self.set_address(iface, address)?;
        self.set_netmask(iface, mask)?;
        if prefix_len < 31 {
            let brd = Ipv4Addr::from(u32::from(address) | !u32::from(mask));
            self.set_broadcast(iface, brd)?;
        }
        if let Some(gw) = gateway {
            if !same_subnet(address, gw, prefix_len) {
                // A gateway outside the subnet (some hosting DHCP servers hand
                // out /32s) needs a link route first or SIOCADDRT says ENETUNREACH.
                self.add_route(iface, "add route to gateway", gw, Ipv4Addr::BROADCAST, None)?;
            }
            self.add_route(
                iface,
                "add default route",
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                Some(gw),
            )?;
        }
        Ok(())
    }
}

fn io_err(iface: &str, step: &'static str) -> NetError {
    NetError::Io {
        iface: iface.to_string(),
        step,
        error: io::Error::last_os_error(),
    }
}

// Layout check against the kernel's struct rtentry (120 bytes on LP64).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(mem::size_of::<RtEntry>() == 120);

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    fn fake_iface(root: &Path, name: &str, ty: &str, device: bool, wireless: bool) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("type"), format!("{ty}\n")).unwrap();
        fs::write(dir.join("address"), "52:54:00:12:34:56\n").unwrap();
        if device {
            std::os::unix::fs::symlink("../../devices/pci0000:00/0000:00:03.0", dir.join("device"))
                .unwrap();
        }
        if wireless {
            fs::create_dir(dir.join("wireless")).unwrap();
        }
        dir
    }

    #[test]
    fn picks_first_physical_ethernet_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fake_iface(root, "lo", "772", false, false);
        fake_iface(root, "lo_with_device", "772", true, false); // loopback type
        fake_iface(root, "br0", "1", false, false); // virtual: no device link
        fake_iface(root, "veth1", "1", false, false);
        fake_iface(root, "wlan0", "1", true, true);
        fake_iface(root, "eth1", "1", true, false);
        fake_iface(root, "enp0s3", "1", true, false);
        fake_iface(root, "can0", "280", true, false);
        assert_eq!(
            first_ethernet_interface_in(root).unwrap(),
            Some("enp0s3".to_string())
        );
    }

    #[test]
    fn no_ethernet_interface() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fake_iface(root, "lo", "772", false, false);
        fake_iface(root, "dummy0", "1", false, false);
        // Unreadable/garbage type files are skipped, not errors.
        let odd = fake_iface(root, "eth9", "x", true, false);
        fs::remove_file(odd.join("type")).unwrap();
        fake_iface(root, "eth8", "ether", true, false);
        assert_eq!(first_ethernet_interface_in(root).unwrap(), None);
    }

    #[test]
    fn missing_sysfs_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        let err = first_ethernet_interface_in(&missing).unwrap_err();
        assert!(err
            .to_string()
            .starts_with(&format!("reading {}", missing.display())));
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("52:54:00:12:ab:CD\n"),
            Some([0x52, 0x54, 0x00, 0x12, 0xab, 0xcd])
        );
        assert_eq!(parse_mac(""), None);
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(parse_mac("52:54:00:12:34:5"), None);
        assert_eq!(parse_mac("52:54:00:12:34:zz"), None);
        assert_eq!(parse_mac("+5:54:00:12:34:56"), None);
    }

    #[test]
    fn mac_from_sysfs() {
        let tmp = tempfile::tempdir().unwrap();
        fake_iface(tmp.path(), "eth0", "1", true, false);
        assert_eq!(
            read_mac(tmp.path(), "eth0").unwrap(),
            [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]
        );
        let err = read_mac(tmp.path(), "eth1").unwrap_err();
        assert!(err.to_string().starts_with("eth1: read MAC address: "));
    }

    #[test]
    fn interface_name_validation() {
        assert!(Ctl::ifreq("eth0", "x").is_ok());
        assert!(Ctl::ifreq("", "x").is_err());
        assert!(Ctl::ifreq("a-very-long-ifname", "x").is_err());
        assert!(Ctl::ifreq("et\0h", "x").is_err());
    }

    #[test]
    fn sockaddr_encoding() {
        let sa = sockaddr_in(Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        // sa_data: port (2 bytes) then the address in network order.
        let data: Vec<u8> = sa.sa_data.iter().map(|&b| b as u8).collect();
        assert_eq!(&data[..6], &[0, 0, 10, 0, 2, 15]);
    }
}
