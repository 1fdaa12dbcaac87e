//! cairn's runtime: the Kubernetes-compatible API server on a revisioned SQLite store (and,
//! later, the node agent). The `cairn` binary is a thin command line over this library.

pub mod agent;
pub mod api;
pub mod controllers;
pub mod server;
pub mod store;
pub mod update;
