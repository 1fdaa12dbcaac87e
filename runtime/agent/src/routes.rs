//! Routes between nodes, host-gw style (flannel's host-gw backend): every other node's podCIDR
//! is routed via that node's InternalIP, so pod traffic crosses the LAN unencapsulated. This
//! needs the nodes on one L2 segment, which is the edge case cairn targets.
//!
//! Our routes carry protocol number [`ROUTE_PROTO`] so they can be listed and removed without
//! touching anybody else's (DHCP, the kernel, an operator's static routes).

use std::net::Ipv4Addr;
use std::process::Command;

use serde_json::Value;

use super::cni::Ipv4Cidr;

/// `proto 67` (0x43, "C" for cairn): unassigned in iproute2's rt_protos, and distinct from
/// the kernel (2), boot (3), static (4), DHCP (16) and the routing daemons (186 and up).
pub const ROUTE_PROTO: u8 = 67;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("running ip: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("ip {args}: {message}")]
    Ip { args: String, message: String },
    #[error("background task failed: {0}")]
    Join(String),
}

pub type Result<T, E = RouteError> = std::result::Result<T, E>;

/// One route to another node's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: Ipv4Cidr,
    pub via: Ipv4Addr,
}

/// The routes this node should have: one per other node with a podCIDR and an IPv4
/// InternalIP, except nodes whose InternalIP is ours (two nodes on one host reach each other
/// through their bridges already). Sorted; one route per podCIDR.
pub fn plan(nodes: &[Value], self_name: &str, local_addrs: &[Ipv4Addr]) -> Vec<Route> {
    let mut routes: Vec<Route> = nodes
        .iter()
        .filter(|node| node["metadata"]["name"].as_str() != Some(self_name))
        .filter_map(|node| {
            let dst = pod_cidr(node)?;
            let via = internal_ip(node)?;
            (!local_addrs.contains(&via)).then_some(Route { dst, via })
        })
        .collect();
    routes.sort();
    routes.dedup_by_key(|r| r.dst);
    routes
}

fn pod_cidr(node: &Value) -> Option<Ipv4Cidr> {
    let spec = &node["spec"];
    let candidates = spec["podCIDR"].as_str().into_iter().chain(
        spec["podCIDRs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str),
    );
    candidates
        .filter_map(|c| c.parse::<Ipv4Cidr>().ok())
        .map(|c| c.normalized())
        .next()
}

fn internal_ip(node: &Value) -> Option<Ipv4Addr> {
    node["status"]["addresses"]
        .as_array()?
        .iter()
        .filter(|a| a["type"].as_str() == Some("InternalIP"))
        .find_map(|a| a["address"].as_str()?.parse().ok())
}

/// Makes the host's routes match [`plan`]: replaces the desired ones, removes ours that are
/// no longer wanted (nodes that left or changed podCIDR).
pub async fn sync(nodes: &[Value], self_name: &str, local_addrs: &[Ipv4Addr]) -> Result<()> {
    let desired = plan(nodes, self_name, local_addrs);
    tokio::task::spawn_blocking(move || apply(&desired))
        .await
        .map_err(|e| RouteError::Join(e.to_string()))?
}

/// Removes every route we added (agent uninstall).
pub async fn remove_all() -> Result<()> {
    tokio::task::spawn_blocking(|| apply(&[]))
        .await
        .map_err(|e| RouteError::Join(e.to_string()))?
}

/// Synchronous core of [`sync`], in the calling thread's network namespace.
pub fn apply(desired: &[Route]) -> Result<()> {
    let proto = ROUTE_PROTO.to_string();
    for existing in installed()? {
        if !desired.iter().any(|r| r.dst == existing) {
            let dst = existing.to_string();
            run_ip(&["-4", "route", "del", &dst, "proto", &proto])?;
            tracing::info!(%dst, "route to departed node removed");
        }
    }
    for route in desired {
        let (dst, via) = (route.dst.to_string(), route.via.to_string());
        run_ip(&["-4", "route", "replace", &dst, "via", &via, "proto", &proto])?;
    }
    Ok(())
}

/// Destinations of the routes carrying our protocol number in the main table. We list all
/// routes and pick ours from the text: iproute2 leaves `proto` out of lines it filtered by
/// proto, and busybox ignores the filter altogether.
pub fn installed() -> Result<Vec<Ipv4Cidr>> {
    let out = run_ip(&["-4", "-o", "route", "show", "table", "main"])?;
    Ok(parse_route_dsts(&out))
}

/// Only lines that say `proto 67` count: busybox's `ip` ignores the `proto` filter and lists
/// every route, and deleting the default route because of that would cut the node off. (With
/// busybox, routes of departed nodes therefore stay until reboot; harmless, and never wrong.)
fn parse_route_dsts(text: &str) -> Vec<Ipv4Cidr> {
    let proto = ROUTE_PROTO.to_string();
    text.lines()
        .filter(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words.windows(2).any(|w| w[0] == "proto" && w[1] == proto)
        })
        .filter_map(|line| {
            let first = line.split_whitespace().next()?;
            // `ip` prints host routes without the /32.
            first.parse::<Ipv4Cidr>().ok().or_else(|| {
                Some(Ipv4Cidr {
                    addr: first.parse().ok()?,
                    prefix: 32,
                })
            })
        })
        .collect()
}

fn run_ip(args: &[&str]) -> Result<String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(RouteError::Spawn)?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(RouteError::Ip {
            args: args.join(" "),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Value {
        let mut addresses = vec![json!({"type": "Hostname", "address": name})];
        if let Some(ip) = ip {
            addresses.push(json!({"type": "InternalIP", "address": ip}));
        }
        json!({"metadata": {"name": name}, "spec": {"podCIDR": cidr}, "status": {"addresses": addresses}})
    }

    fn route(dst: &str, via: &str) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            via: via.parse().unwrap(),
        }
    }

    #[test]
    fn plan_routes_other_nodes_pod_cidrs_via_their_internal_ip() {
        let nodes = vec![
            node("me", Some("10.42.0.0/24"), Some("192.168.1.10")),
            node("b", Some("10.42.2.0/24"), Some("192.168.1.12")),
            node("a", Some("10.42.1.0/24"), Some("192.168.1.11")),
            node("no-cidr", None, Some("192.168.1.13")),
            node("no-ip", Some("10.42.4.0/24"), None),
            node("same-host", Some("10.42.5.0/24"), Some("192.168.1.10")),
            json!({"metadata": {"name": "v6"}, "spec": {"podCIDRs": ["fd00::/64", "10.42.6.0/24"]},
                   "status": {"addresses": [{"type": "InternalIP", "address": "fe80::1"},
                                            {"type": "InternalIP", "address": "192.168.1.16"}]}}),
        ];
        let local = ["192.168.1.10".parse().unwrap()];
        assert_eq!(
            plan(&nodes, "me", &local),
            vec![
                route("10.42.1.0/24", "192.168.1.11"),
                route("10.42.2.0/24", "192.168.1.12"),
                route("10.42.6.0/24", "192.168.1.16"),
            ]
        );
        assert!(plan(&[], "me", &local).is_empty());
    }

    #[test]
    fn ip_route_output_is_parsed() {
        // The last two lines are what busybox prints when it ignores `proto 67`: not ours.
        let text = "10.42.1.0/24 via 192.168.1.11 dev eth0 proto 67 \n10.9.9.9 via 192.168.1.1 dev eth0 proto 67 linkdown\ndefault via 192.168.1.1 dev eth0\n10.42.2.0/24 via 192.168.1.12 dev eth0\n";
        assert_eq!(
            parse_route_dsts(text),
            vec![
                "10.42.1.0/24".parse().unwrap(),
                "10.9.9.9/32".parse().unwrap()
            ]
        );
    }

    /// Runs in a throwaway network namespace (unshared by a dedicated thread, gone when the
    /// thread ends), so the host's routes are never touched even if an assert fails.
    #[test]
    fn apply_adds_replaces_and_removes_our_routes_only() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        std::thread::spawn(|| {
            // SAFETY: only this thread moves to the new namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            for args in [
                &["link", "add", "rt0", "type", "veth", "peer", "name", "rt1"][..],
                &["addr", "add", "192.168.77.1/24", "dev", "rt0"],
                &["link", "set", "rt0", "up"],
                &["link", "set", "rt1", "up"],
                // Someone else's route in the same range of concern: must survive.
                &["route", "add", "10.99.0.0/24", "via", "192.168.77.254"],
            ] {
                run_ip(args).unwrap();
            }
            apply(&[
                route("10.42.1.0/24", "192.168.77.11"),
                route("10.42.2.0/24", "192.168.77.12"),
            ])
            .unwrap();
            let mut got = installed().unwrap();
            got.sort();
            assert_eq!(
                got,
                vec![
                    "10.42.1.0/24".parse().unwrap(),
                    "10.42.2.0/24".parse().unwrap()
                ]
            );
            // A node moved (new InternalIP) and another left.
            apply(&[route("10.42.1.0/24", "192.168.77.21")]).unwrap();
            let shown = run_ip(&["-4", "-o", "route", "show", "proto", "67"]).unwrap();
            assert!(shown.contains("10.42.1.0/24 via 192.168.77.21"), "{shown}");
            assert!(!shown.contains("10.42.2.0/24"), "{shown}");
            apply(&[]).unwrap();
            assert!(installed().unwrap().is_empty());
            let all = run_ip(&["-4", "route", "show"]).unwrap();
            assert!(
                all.contains("10.99.0.0/24 via 192.168.77.254"),
                "foreign route removed: {all}"
            );
        })
        .join()
        .unwrap();
    }
}
