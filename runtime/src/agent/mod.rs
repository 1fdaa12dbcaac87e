//! The node agent (`cairn agent`, and embedded in `cairn server`): the kubelet, kube-proxy and
//! CoreDNS parts of a Kubernetes node. It registers the node, keeps its Lease, runs the pods the
//! scheduler binds here through containerd's gRPC API, wires their network with the standard
//! CNI plugins, programs Services into nftables, answers cluster DNS, and serves logs and exec
//! to the server over one connection it opens itself (no inbound port on the node).

pub mod client;
pub mod cni;
pub mod containerd;
pub mod dns;
pub mod env;
pub mod images;
pub mod join;
pub mod logs;
pub mod node;
pub mod pods;
pub mod probes;
pub mod proxy;
pub mod routes;
pub mod spec;
pub mod tunnel;
pub mod volumes;
