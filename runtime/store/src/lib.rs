//! The revisioned key-value store the API server keeps every object in.
//!
//! The design follows kine: the store is an append-only log of rows; every write (create,
//! update, delete) appends one row, and the row's id is the global revision that Kubernetes
//! calls `resourceVersion`. An update is a compare-and-swap on the key's current mod revision,
//! a delete appends a tombstone, a watch streams the rows after a revision, and compaction
//! drops superseded rows and old tombstones so the history stays bounded.
//!
//! [`Store`] is the interface the API server uses; [`SqliteStore`] implements it on SQLite.
//! A second implementation (PostgreSQL, for servers that share a datastore) fits the same
//! trait.

pub mod sqlite;
#[cfg(test)]
mod tests;

pub use sqlite::SqliteStore;

use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A global revision: the id of the row a write appended. Revisions only grow; 0 means "before
/// the first write".
pub type Revision = i64;

/// The largest value a single write may carry (the Kubernetes API server refuses request
/// bodies above 3 MiB, so no object it stores is larger).
pub const MAX_VALUE_BYTES: usize = 3 * 1024 * 1024;

/// One key's value as of some revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision of the write that produced this value (its "mod revision").
    pub revision: Revision,
    /// The revision of the write that created the key (a delete and re-create starts anew).
    pub create_revision: Revision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// A change to one key, as a watch delivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For `Put`: the new value. For `Delete`: the last value the key had, with `revision` set
    /// to the tombstone's revision.
    pub record: Record,
    /// The value the key had before this event: `None` for a create, the replaced value for an
    /// update, the deleted value (with its own mod revision) for a delete.
    pub prev: Option<Record>,
}

/// The answer to a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListResult {
    pub records: Vec<Record>,
    /// The store revision the list is consistent at: continue a paginated list at this
    /// revision, and start a watch after it.
    pub revision: Revision,
    /// More keys match after the last one returned.
    pub more: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("key not found")]
    NotFound,
    #[error("key already exists")]
    AlreadyExists,
    #[error("revision conflict: the key is at revision {current}")]
    Conflict { current: Revision },
    #[error("revision has been compacted (compacted revision is {compacted})")]
    Compacted { compacted: Revision },
    #[error("revision is in the future (current revision is {current})")]
    FutureRevision { current: Revision },
    #[error("value of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("storage backend: {0}")]
    Backend(String),
}

/// The revisioned key-value store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The revision of the newest write (0 for an empty store).
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// The key's current value, `None` if it does not exist (or was deleted).
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError>;

    /// The keys starting with `prefix`, in key order (byte order of their UTF-8), strictly after
    /// `start_after` if given, at most `limit` of them (0 = all), as of revision `at` (`None` =
    /// now). `Err(Compacted)` if `at` is older than the compacted revision,
    /// `Err(FutureRevision)` if it is newer than the current one.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        at: Option<Revision>,
    ) -> Result<ListResult, StoreError>;

    /// How many keys start with `prefix` now.
    async fn count(&self, prefix: &str) -> Result<usize, StoreError>;

    /// Creates the key; `Err(AlreadyExists)` if it exists.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Record, StoreError>;

    /// Replaces the key's value if its current mod revision is `expected`;
    /// `Err(NotFound)` if it does not exist, `Err(Conflict { current })` if it changed.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<Record, StoreError>;

    /// Deletes the key (if `expected` is given, only if its current mod revision is that) and
    /// returns the deleted value with the tombstone's revision.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Record, StoreError>;

    /// The events for keys under `prefix` with revision greater than `after`: first the ones
    /// already in the store, then live ones as they commit, in revision order, with no gap and
    /// no duplicate. `Err(Compacted)` if `after` is older than the compacted revision. The
    /// channel closes when the watcher falls too far behind (or the store shuts down); the
    /// caller then re-lists and watches again (the API answers such a watch with 410 Gone).
    /// Events are shared: every watcher of a commit holds the same one, not a copy.
    async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<mpsc::Receiver<Arc<Event>>, StoreError>;

    /// Removes rows that are superseded, and tombstones, at or below `current - keep_revisions`
    /// and records that revision as compacted. Returns the compacted revision.
    async fn compact(&self, keep_revisions: i64) -> Result<Revision, StoreError>;
}

/// The smallest string greater than every string that starts with `prefix`, or `None` when
/// there is no such bound (empty prefix, or one made only of `char::MAX`). Keys starting with
/// `prefix` are exactly those in `prefix..bound` (SQLite compares text by its UTF-8 bytes,
/// whose order is the code point order).
pub(crate) fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        // Skip the surrogate range, which no `char` can hold.
        if (0xD800..=0xDFFF).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}
