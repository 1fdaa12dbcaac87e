//! What cairn's server, agent and command line share on the wire, without depending on each
//! other: the join and tunnel protocols, the API client, kubeconfig files, and the small
//! Kubernetes value helpers (time, quantities, fields) every side reads objects with.

pub mod client;
pub mod events;
pub mod join;
pub mod kubeconfig;
pub mod net;
pub mod qos;
pub mod quantity;
pub mod secret;
pub mod time;
pub mod tunnel;
pub mod value;
