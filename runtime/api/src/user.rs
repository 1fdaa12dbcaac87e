//! Who is asking, as authentication found out (kube-apiserver's `user.Info`).

/// An authenticated user and the groups it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}
