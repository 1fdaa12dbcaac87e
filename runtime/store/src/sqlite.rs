//! [`SqliteStore`]: the [`Store`] on one SQLite database in WAL mode.
//!
//! Schema: every write appends one row to `kv`; the row id (AUTOINCREMENT, so never reused,
//! even after compaction removed the newest rows) is the revision. A row carries the key's
//! create revision, the id of the row it supersedes (`prev_revision`) and the value it
//! replaces (`old_value`), so each row alone is a complete watch event and compaction can drop
//! superseded rows without losing the events that follow them. A delete appends a tombstone
//! (`deleted = 1`, `value` NULL, `old_value` the last value). `meta` keeps the compacted
//! revision and the schema version.
//!
//! Writes: one thread owns the only read-write connection. Callers queue requests on a
//! channel; the writer takes every request that is waiting (up to `max_batch`), applies them in
//! order inside ONE transaction, each in its own savepoint so that a failed compare-and-swap
//! fails only its own request, commits (one fsync for the whole batch, `synchronous=FULL`),
//! publishes the committed events to the watchers and answers each caller. A caller's write is
//! acknowledged only after the commit that holds it is durable.
//!
//! Reads: a small pool of read-only connections, used from `spawn_blocking`. Each read that
//! needs more than one statement runs in one read transaction, so it sees one snapshot.
//!
//! Watch: the watcher is registered with the writer first, then the backlog is read from the
//! table, then live events are passed on, skipping those at or below the last revision the
//! backlog delivered. Because the writer publishes only after a commit, any commit published
//! before the registration is in the backlog's snapshot, and any published after it arrives
//! live: nothing is lost, and the revision check removes the overlap. The writer never waits
//! for a watcher: one whose buffer is full is dropped, which closes its channel.

use super::{
    prefix_end, Event, EventKind, ListResult, Record, Revision, Store, StoreError, MAX_VALUE_BYTES,
};
use async_trait::async_trait;
use rusqlite::types::ToSql;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS kv (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    key             TEXT    NOT NULL,
    created         INTEGER NOT NULL,
    deleted         INTEGER NOT NULL,
    create_revision INTEGER NOT NULL,
    prev_revision   INTEGER NOT NULL,
    value           BLOB,
    old_value       BLOB
);
CREATE INDEX IF NOT EXISTS kv_key_id ON kv (key, id);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', 1), ('compact_revision', 0);
COMMIT;
";

const ROW_COLUMNS: &str =
    "id, key, created, deleted, create_revision, prev_revision, value, old_value";

/// How long a WAL checkpoint waits for readers before giving up until the next one.
const CHECKPOINT_WAIT: Duration = Duration::from_millis(100);

/// Requests waiting for the writer before callers have to wait to queue more.
const REQUEST_QUEUE: usize = 1024;

/// Tuning knobs; [`Default`] is what the server uses.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// How long a connection waits for a lock before failing.
    pub busy_timeout: Duration,
    /// The most write requests committed in one transaction.
    pub max_batch: usize,
    /// Events a watcher may have pending (per buffer: live events not yet taken, and events
    /// not yet read by the client) before it is dropped.
    pub watch_buffer: usize,
    /// Idle read connections kept open.
    pub read_pool: usize,
    /// The most revisions one compaction transaction covers (writes wait while it runs).
    pub compact_chunk: i64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            busy_timeout: Duration::from_secs(5),
            max_batch: 256,
            watch_buffer: 4096,
            read_pool: 4,
            compact_chunk: 10_000,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

fn writer_gone() -> StoreError {
    StoreError::Backend("the store's writer has stopped".to_owned())
}

/// The revisioned store on SQLite. Share it as `Arc<SqliteStore>` (or `Arc<dyn Store>`);
/// dropping the last handle stops the writer once the queued requests are done and closes
/// every watch.
pub struct SqliteStore {
    options: StoreOptions,
    requests: mpsc::Sender<Request>,
    readers: Arc<ReadPool>,
    watchers: Arc<Watchers>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// [`open`](Self::open) with other [`StoreOptions`].
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        if options.max_batch == 0 || options.watch_buffer == 0 || options.compact_chunk <= 0 {
            return Err(StoreError::InvalidArgument(
                "max_batch, watch_buffer and compact_chunk must be positive".to_owned(),
            ));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(options.busy_timeout)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "{}: cannot use WAL journal mode (SQLite chose {mode})",
                path.display()
            )));
        }
        // Every commit is fsynced before it is acknowledged.
        conn.pragma_update(None, "synchronous", "FULL")?;
        // After a checkpoint resets the WAL, shrink the file back to this size.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        conn.execute_batch(SCHEMA)?;
        let version: i64 = conn.query_row(
            "SELECT value FROM meta WHERE name = 'schema_version'",
            [],
            |r| r.get(0),
        )?;
        if version != SCHEMA_VERSION {
            return Err(StoreError::Backend(format!(
                "{}: schema version {version}, this build knows {SCHEMA_VERSION}",
                path.display()
            )));
        }

        let (requests, queue) = mpsc::channel(REQUEST_QUEUE);
        let watchers = Arc::new(Watchers::default());
        let writer = Writer {
            conn,
            queue,
            watchers: Arc::clone(&watchers),
            max_batch: options.max_batch,
            busy_timeout: options.busy_timeout,
        };
        std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Backend(format!("starting the writer thread: {e}")))?;

        let readers = Arc::new(ReadPool {
            path: path.to_owned(),
            busy_timeout: options.busy_timeout,
            max_idle: options.read_pool,
            idle: Mutex::new(Vec::new()),
        });
        info!(path = %path.display(), "store opened");
        Ok(SqliteStore {
            options,
            requests,
            readers,
            watchers,
        })
    }

    /// Copies the WAL into the database file and truncates the WAL.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Checkpoint { reply }).await?;
        answer.await.map_err(|_| writer_gone())?
    }

    /// Compacts every `every`, keeping the last `keep` revisions, and checkpoints the WAL after
    /// each compaction so it stays bounded. The task ends when the store is dropped. Call it
    /// from within a tokio runtime; outside one (or with a zero period or a negative `keep`)
    /// it logs an error and does nothing.
    pub fn spawn_compactor(self: &Arc<Self>, every: Duration, keep: i64) {
        if every.is_zero() || keep < 0 {
            error!(?every, keep, "compactor not started: bad period or keep");
            return;
        }
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime,
            Err(e) => {
                error!(error = %e, "compactor not started: no tokio runtime");
                return;
            }
        };
        let store = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick completes at once; compaction starts one period after opening.
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(store) = store.upgrade() else {
                    debug!("store dropped; compactor stops");
                    return;
                };
                match store.compact(keep).await {
                    Ok(revision) => debug!(revision, "compaction done"),
                    Err(e) => warn!(error = %e, "compaction failed"),
                }
                if let Err(e) = store.checkpoint().await {
                    warn!(error = %e, "WAL checkpoint failed");
                }
            }
        });
    }

    async fn send(&self, request: Request) -> Result<(), StoreError> {
        self.requests.send(request).await.map_err(|_| writer_gone())
    }

    async fn write(&self, op: WriteOp) -> Result<Record, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Write { op, reply }).await?;
        answer.await.map_err(|_| writer_gone())?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || pool.run(f))
            .await
            .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidArgument("empty key".to_owned()));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::TooLarge {
            size: value.len(),
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.read(|conn| current_revision(conn)).await
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.read(move |conn| {
            Ok(latest(conn, &key)?
                .filter(|row| !row.deleted)
                .map(|row| Record {
                    key,
                    value: row.value,
                    revision: row.id,
                    create_revision: row.create_revision,
                }))
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        at: Option<Revision>,
    ) -> Result<ListResult, StoreError> {
        let prefix = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        self.read(move |conn| list(conn, &prefix, start_after.as_deref(), limit, at))
            .await
    }

    async fn count(&self, prefix: &str) -> Result<usize, StoreError> {
        let prefix = prefix.to_owned();
        self.read(move |conn| count(conn, &prefix)).await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Record, StoreError> {
        check_key(key)?;
        check_value(&value)?;
        self.write(WriteOp::Create {
            key: key.to_owned(),
            value,
        })
        .await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<Record, StoreError> {
        check_key(key)?;
        check_value(&value)?;
        self.write(WriteOp::Update {
            key: key.to_owned(),
            value,
            expected,
        })
        .await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Record, StoreError> {
        check_key(key)?;
        self.write(WriteOp::Delete {
            key: key.to_owned(),
            expected,
        })
        .await
    }

    async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<mpsc::Receiver<Arc<Event>>, StoreError> {
        if after < 0 {
            return Err(StoreError::InvalidArgument(format!(
                "watch after negative revision {after}"
            )));
        }
        // Register first, so that every commit not in the backlog's snapshot arrives live.
        let (live_tx, live_rx) = mpsc::channel(self.options.watch_buffer);
        let registration = Registration {
            id: self.watchers.add(prefix.to_owned(), live_tx),
            watchers: Arc::clone(&self.watchers),
        };
        // The first page now, so that a compacted revision is the caller's error; the rest
        // as the watcher takes it.
        let owned_prefix = prefix.to_owned();
        let first = self
            .read(move |conn| backlog_page(conn, &owned_prefix, after))
            .await?;
        debug!(prefix, after, first_page = first.len(), "watch started");
        let (out_tx, out_rx) = mpsc::channel(self.options.watch_buffer);
        let backlog = Backlog {
            readers: Arc::clone(&self.readers),
            prefix: prefix.to_owned(),
            page: first,
        };
        tokio::spawn(forward(registration, backlog, live_rx, out_tx, after));
        Ok(out_rx)
    }

    async fn compact(&self, keep_revisions: i64) -> Result<Revision, StoreError> {
        if keep_revisions < 0 {
            return Err(StoreError::InvalidArgument(format!(
                "keep {keep_revisions} revisions"
            )));
        }
        let (current, mut compacted) = self
            .read(|conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
                Ok((current_revision(&tx)?, compacted_revision(&tx)?))
            })
            .await?;
        let target = current.saturating_sub(keep_revisions);
        while compacted < target {
            let upto = compacted
                .saturating_add(self.options.compact_chunk)
                .min(target);
            let (reply, answer) = oneshot::channel();
            self.send(Request::Compact { upto, reply }).await?;
            let now = answer.await.map_err(|_| writer_gone())??;
            if now <= compacted {
                break;
            }
            compacted = now;
        }
        Ok(compacted)
    }
}

// ---------------------------------------------------------------------------------------------
// Watchers

#[derive(Default)]
struct Watchers {
    next_id: AtomicU64,
    slots: Mutex<Vec<WatchSlot>>,
}

struct WatchSlot {
    id: u64,
    prefix: String,
    live: mpsc::Sender<Arc<Event>>,
}

impl Watchers {
    fn slots(&self) -> MutexGuard<'_, Vec<WatchSlot>> {
        // The lock only guards a list; a panic elsewhere cannot leave it half-changed.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, prefix: String, live: mpsc::Sender<Arc<Event>>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.slots().push(WatchSlot { id, prefix, live });
        id
    }

    fn remove(&self, id: u64) {
        self.slots().retain(|slot| slot.id != id);
    }

    /// Hands committed events to every matching watcher without waiting; a watcher whose
    /// buffer is full is dropped (its channel closes once it has taken what is buffered).
    fn publish(&self, events: &[Arc<Event>]) {
        if events.is_empty() {
            return;
        }
        self.slots().retain(|slot| {
            for event in events
                .iter()
                .filter(|e| e.record.key.starts_with(&slot.prefix))
            {
                match slot.live.try_send(event.clone()) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        warn!(prefix = %slot.prefix, "watcher fell behind; closing it");
                        return false;
                    }
                    Err(TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
    }

    fn close_all(&self) {
        self.slots().clear();
    }
}

/// Unregisters a watcher when its forwarding task ends.
struct Registration {
    id: u64,
    watchers: Arc<Watchers>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.watchers.remove(self.id);
    }
}

/// The events a watcher missed, read a page at a time as it takes them.
struct Backlog {
    readers: Arc<ReadPool>,
    prefix: String,
    /// The page being delivered; a short one is the last.
    page: Vec<Event>,
}

/// Passes the backlog, then the live events after it, to the client's channel.
async fn forward(
    _registration: Registration,
    mut backlog: Backlog,
    mut live: mpsc::Receiver<Arc<Event>>,
    out: mpsc::Sender<Arc<Event>>,
    after: Revision,
) {
    let mut last = after;
    loop {
        let full = backlog.page.len() == BACKLOG_PAGE;
        for event in std::mem::take(&mut backlog.page) {
            last = event.record.revision;
            if out.send(Arc::new(event)).await.is_err() {
                return;
            }
        }
        if !full {
            break;
        }
        let (readers, prefix) = (Arc::clone(&backlog.readers), backlog.prefix.clone());
        let next = tokio::task::spawn_blocking(move || {
            readers.run(|conn| backlog_page(conn, &prefix, last))
        })
        .await;
        match next {
            Ok(Ok(page)) => backlog.page = page,
            // Compacted past what was delivered, or unreadable: closing the channel tells
            // the watcher to list again, as one that fell behind.
            Ok(Err(e)) => {
                debug!(error = %e, "watch backlog ended early");
                return;
            }
            Err(_) => return,
        }
    }
    loop {
        let event = tokio::select! {
            _ = out.closed() => return,
            event = live.recv() => match event {
                Some(event) => event,
                // Dropped for falling behind, or the store shut down.
                None => return,
            },
        };
        if event.record.revision <= last {
            continue; // already delivered from the backlog
        }
        last = event.record.revision;
        if out.send(event).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reads

struct ReadPool {
    path: PathBuf,
    busy_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    fn idle(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(self.busy_timeout)?;
        Ok(conn)
    }

    fn run<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.idle().pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => self.open()?,
        };
        let result = f(&mut conn);
        // A connection somehow left inside a transaction is not reused.
        if conn.is_autocommit() {
            let mut idle = self.idle();
            if idle.len() < self.max_idle {
                idle.push(conn);
            }
        }
        result
    }
}

fn current_revision(conn: &Connection) -> Result<Revision, StoreError> {
    // AUTOINCREMENT's high-water mark: still right after compaction removed the newest rows.
    Ok(conn
        .prepare_cached("SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'kv'), 0)")?
        .query_row([], |r| r.get(0))?)
}

fn compacted_revision(conn: &Connection) -> Result<Revision, StoreError> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE name = 'compact_revision'")?
        .query_row([], |r| r.get(0))?)
}

/// The newest row of a key, live or tombstone.
struct Latest {
    id: Revision,
    deleted: bool,
    create_revision: Revision,
    value: Vec<u8>,
}

fn latest(conn: &Connection, key: &str) -> Result<Option<Latest>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT id, deleted, create_revision, value FROM kv
             WHERE key = ?1 ORDER BY id DESC LIMIT 1",
        )?
        .query_row([key], |r| {
            Ok(Latest {
                id: r.get(0)?,
                deleted: r.get(1)?,
                create_revision: r.get(2)?,
                value: r.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default(),
            })
        })
        .optional()?)
}

/// `WHERE` conditions (on table alias `o`) selecting the keys under `prefix`, after
/// `start_after`, whose newest row at or below `:at` is live, and the parameters they use.
fn live_keys_filter<'a>(
    prefix: &'a dyn ToSql,
    end: Option<&'a dyn ToSql>,
    start_after: Option<&'a dyn ToSql>,
    at: &'a dyn ToSql,
) -> (String, Vec<(&'static str, &'a dyn ToSql)>) {
    let mut sql = String::from("o.key >= :prefix");
    let mut args: Vec<(&'static str, &dyn ToSql)> = vec![(":prefix", prefix), (":at", at)];
    if let Some(end) = end {
        sql.push_str(" AND o.key < :end");
        args.push((":end", end));
    }
    if let Some(start_after) = start_after {
        sql.push_str(" AND o.key > :after");
        args.push((":after", start_after));
    }
    sql.push_str(
        " AND o.id <= :at AND o.deleted = 0
          AND o.id = (SELECT MAX(i.id) FROM kv AS i WHERE i.key = o.key AND i.id <= :at)",
    );
    (sql, args)
}

fn list(
    conn: &mut Connection,
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
    at: Option<Revision>,
) -> Result<ListResult, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let current = current_revision(&tx)?;
    let revision = match at {
        None => current,
        Some(at) => {
            let compacted = compacted_revision(&tx)?;
            if at < compacted {
                return Err(StoreError::Compacted { compacted });
            }
            if at > current {
                return Err(StoreError::FutureRevision { current });
            }
            at
        }
    };
    let prefix = prefix.to_owned();
    let end = prefix_end(&prefix);
    let (filter, mut args) = live_keys_filter(
        &prefix,
        end.as_ref().map(|e| e as &dyn ToSql),
        start_after.as_ref().map(|s| s as &dyn ToSql),
        &revision,
    );
    // One more than asked, to learn whether more follow; -1 is SQLite's "no limit".
    let fetch: i64 = if limit == 0 {
        -1
    } else {
        i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1
    };
    args.push((":limit", &fetch));
    let sql = format!(
        "SELECT o.key, o.value, o.id, o.create_revision FROM kv AS o
         WHERE {filter} ORDER BY o.key LIMIT :limit"
    );
    let mut records = {
        let mut stmt = tx.prepare_cached(&sql)?;
        let rows = stmt.query_map(args.as_slice(), |r| {
            Ok(Record {
                key: r.get(0)?,
                value: r.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
                revision: r.get(2)?,
                create_revision: r.get(3)?,
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    let more = limit != 0 && records.len() > limit;
    if more {
        records.truncate(limit);
    }
    Ok(ListResult {
        records,
        revision,
        more,
    })
}

fn count(conn: &mut Connection, prefix: &str) -> Result<usize, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let at = current_revision(&tx)?;
    let prefix = prefix.to_owned();
    let end = prefix_end(&prefix);
    let (filter, args) =
        live_keys_filter(&prefix, end.as_ref().map(|e| e as &dyn ToSql), None, &at);
    let sql = format!("SELECT COUNT(*) FROM kv AS o WHERE {filter}");
    let n: i64 = tx
        .prepare_cached(&sql)?
        .query_row(args.as_slice(), |r| r.get(0))?;
    usize::try_from(n).map_err(|e| StoreError::Backend(format!("count {n}: {e}")))
}

/// One row of `kv`, complete enough to be a watch event on its own.
struct Row {
    id: Revision,
    key: String,
    created: bool,
    deleted: bool,
    create_revision: Revision,
    prev_revision: Revision,
    value: Option<Vec<u8>>,
    old_value: Option<Vec<u8>>,
}

impl Row {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        Ok(Row {
            id: r.get(0)?,
            key: r.get(1)?,
            created: r.get(2)?,
            deleted: r.get(3)?,
            create_revision: r.get(4)?,
            prev_revision: r.get(5)?,
            value: r.get(6)?,
            old_value: r.get(7)?,
        })
    }

    fn into_event(self) -> Event {
        let prev = (!self.created).then(|| Record {
            key: self.key.clone(),
            value: self.old_value.clone().unwrap_or_default(),
            revision: self.prev_revision,
            create_revision: self.create_revision,
        });
        if self.deleted {
            Event {
                kind: EventKind::Delete,
                record: Record {
                    key: self.key,
                    value: self.old_value.unwrap_or_default(),
                    revision: self.id,
                    create_revision: self.create_revision,
                },
                prev,
            }
        } else {
            Event {
                kind: EventKind::Put,
                record: Record {
                    key: self.key,
                    value: self.value.unwrap_or_default(),
                    revision: self.id,
                    create_revision: self.create_revision,
                },
                prev,
            }
        }
    }
}

/// The events under `prefix` after revision `after`, from one snapshot.
/// How many backlog events a watch reads at a time.
const BACKLOG_PAGE: usize = 256;

/// The next [`BACKLOG_PAGE`] events under `prefix` after revision `after`.
fn backlog_page(
    conn: &mut Connection,
    prefix: &str,
    after: Revision,
) -> Result<Vec<Event>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let compacted = compacted_revision(&tx)?;
    if after < compacted {
        return Err(StoreError::Compacted { compacted });
    }
    let prefix = prefix.to_owned();
    let end = prefix_end(&prefix);
    let mut args: Vec<(&str, &dyn ToSql)> = vec![(":after", &after), (":prefix", &prefix)];
    let mut sql = format!("SELECT {ROW_COLUMNS} FROM kv WHERE id > :after AND key >= :prefix");
    if let Some(end) = &end {
        sql.push_str(" AND key < :end");
        args.push((":end", end));
    }
    sql.push_str(" ORDER BY id LIMIT :page");
    let page = BACKLOG_PAGE as i64;
    args.push((":page", &page));
    let mut stmt = tx.prepare_cached(&sql)?;
    let rows = stmt.query_map(args.as_slice(), Row::read)?;
    let mut events = Vec::with_capacity(BACKLOG_PAGE);
    for row in rows {
        events.push(row?.into_event());
    }
    Ok(events)
}

// ---------------------------------------------------------------------------------------------
// The writer

enum WriteOp {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

enum Request {
    Write {
        op: WriteOp,
        reply: oneshot::Sender<Result<Record, StoreError>>,
    },
    Compact {
        upto: Revision,
        reply: oneshot::Sender<Result<Revision, StoreError>>,
    },
    Checkpoint {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

impl Request {
    fn fail(self, error: StoreError) {
        // A caller that stopped waiting has nobody to tell.
        match self {
            Request::Write { reply, .. } => drop(reply.send(Err(error))),
            Request::Compact { reply, .. } => drop(reply.send(Err(error))),
            Request::Checkpoint { reply } => drop(reply.send(Err(error))),
        }
    }
}

/// What a request in a batch came to, held until the batch commits (or does not).
enum Outcome {
    Write(
        oneshot::Sender<Result<Record, StoreError>>,
        Result<Event, StoreError>,
    ),
    Compact(
        oneshot::Sender<Result<Revision, StoreError>>,
        Result<Revision, StoreError>,
    ),
}

impl Outcome {
    fn fail(self, error: StoreError) {
        match self {
            Outcome::Write(reply, _) => drop(reply.send(Err(error))),
            Outcome::Compact(reply, _) => drop(reply.send(Err(error))),
        }
    }
}

/// A request's result inside the batch's transaction.
enum Step<T> {
    /// The request is done (its changes kept if `Ok`, rolled back if `Err`); the transaction
    /// goes on.
    Done(Result<T, StoreError>),
    /// The transaction itself failed: the whole batch is lost.
    Lost(StoreError),
}

/// Runs `f` in a savepoint, so that a request that fails half-way leaves nothing behind.
fn step<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Step<T> {
    if let Err(e) = conn.execute_batch("SAVEPOINT request") {
        return Step::Lost(e.into());
    }
    let result = f(conn);
    // Some errors (I/O, disk full) make SQLite roll the whole transaction back.
    if conn.is_autocommit() {
        return Step::Lost(match result {
            Err(e) => e,
            Ok(_) => StoreError::Backend("the transaction ended unexpectedly".to_owned()),
        });
    }
    let end = if result.is_ok() {
        "RELEASE request"
    } else {
        "ROLLBACK TO request; RELEASE request"
    };
    match conn.execute_batch(end) {
        Ok(()) => Step::Done(result),
        Err(e) => Step::Lost(e.into()),
    }
}

struct Writer {
    conn: Connection,
    queue: mpsc::Receiver<Request>,
    watchers: Arc<Watchers>,
    max_batch: usize,
    busy_timeout: Duration,
}

impl Writer {
    fn run(mut self) {
        debug!("store writer started");
        while let Some(first) = self.queue.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match self.queue.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.process(batch);
        }
        // Every handle to the store is gone: end the watches.
        self.watchers.close_all();
        debug!("store writer stopped");
    }

    fn process(&mut self, batch: Vec<Request>) {
        let mut checkpoints = Vec::new();
        let mut work = Vec::with_capacity(batch.len());
        for request in batch {
            match request {
                Request::Checkpoint { reply } => checkpoints.push(reply),
                other => work.push(other),
            }
        }
        if !work.is_empty() {
            self.commit_batch(work);
        }
        for reply in checkpoints {
            drop(reply.send(self.checkpoint()));
        }
    }

    fn commit_batch(&mut self, work: Vec<Request>) {
        let size = work.len();
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            let error = StoreError::from(e);
            error!(error = %error, "cannot begin a write transaction");
            for request in work {
                request.fail(error.clone());
            }
            return;
        }
        let mut outcomes = Vec::with_capacity(size);
        let mut lost = None;
        let mut pending = work.into_iter();
        for request in pending.by_ref() {
            let (outcome, step_lost) = match request {
                Request::Write { op, reply } => match step(&self.conn, |c| apply(c, op)) {
                    Step::Done(result) => (Outcome::Write(reply, result), None),
                    Step::Lost(e) => (Outcome::Write(reply, Err(e.clone())), Some(e)),
                },
                Request::Compact { upto, reply } => match step(&self.conn, |c| compact(c, upto)) {
                    Step::Done(result) => (Outcome::Compact(reply, result), None),
                    Step::Lost(e) => (Outcome::Compact(reply, Err(e.clone())), Some(e)),
                },
                Request::Checkpoint { reply } => {
                    // Sorted out by `process`; never inside a transaction.
                    drop(reply.send(Ok(())));
                    continue;
                }
            };
            outcomes.push(outcome);
            if step_lost.is_some() {
                lost = step_lost;
                break;
            }
        }
        if lost.is_none() {
            if let Err(e) = self.conn.execute_batch("COMMIT") {
                lost = Some(e.into());
            }
        }
        if let Some(error) = lost {
            error!(error = %error, requests = size, "write transaction failed; batch rolled back");
            if !self.conn.is_autocommit() {
                if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                    error!(error = %e, "rollback failed");
                }
            }
            for outcome in outcomes {
                outcome.fail(error.clone());
            }
            for request in pending {
                request.fail(error.clone());
            }
            return;
        }

        // Durable now: tell the watchers, then the callers.
        let mut events = Vec::with_capacity(outcomes.len());
        let mut replies = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            match outcome {
                Outcome::Write(reply, Ok(event)) => {
                    replies.push((reply, Ok(event.record.clone())));
                    events.push(Arc::new(event));
                }
                Outcome::Write(reply, Err(e)) => replies.push((reply, Err(e))),
                Outcome::Compact(reply, result) => drop(reply.send(result)),
            }
        }
        debug!(requests = size, events = events.len(), "batch committed");
        self.watchers.publish(&events);
        for (reply, result) in replies {
            drop(reply.send(result));
        }
    }

    /// `PRAGMA wal_checkpoint(TRUNCATE)`. It has to wait for readers on old snapshots; it
    /// waits only briefly (writes queue up meanwhile) and leaves the rest to the next one.
    fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn.busy_timeout(CHECKPOINT_WAIT)?;
        let result = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            });
        self.conn.busy_timeout(self.busy_timeout)?;
        let (busy, log, done) = result?;
        if busy != 0 {
            debug!(
                log,
                done, "WAL checkpoint could not finish (readers active)"
            );
        }
        Ok(())
    }
}

/// A row to append.
struct NewRow<'a> {
    key: &'a str,
    created: bool,
    deleted: bool,
    create_revision: Revision,
    prev_revision: Revision,
    value: Option<&'a [u8]>,
    old_value: Option<&'a [u8]>,
}

fn insert(conn: &Connection, row: NewRow<'_>) -> Result<Revision, StoreError> {
    conn.prepare_cached(
        "INSERT INTO kv (key, created, deleted, create_revision, prev_revision, value, old_value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        row.key,
        row.created,
        row.deleted,
        row.create_revision,
        row.prev_revision,
        row.value,
        row.old_value
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Applies one write inside the batch's transaction.
fn apply(conn: &Connection, op: WriteOp) -> Result<Event, StoreError> {
    match op {
        WriteOp::Create { key, value } => {
            let prev_revision = match latest(conn, &key)? {
                Some(row) if !row.deleted => return Err(StoreError::AlreadyExists),
                Some(tombstone) => tombstone.id,
                None => 0,
            };
            let id = insert(
                conn,
                NewRow {
                    key: &key,
                    created: true,
                    deleted: false,
                    create_revision: 0,
                    prev_revision,
                    value: Some(&value),
                    old_value: None,
                },
            )?;
            conn.prepare_cached("UPDATE kv SET create_revision = id WHERE id = ?1")?
                .execute([id])?;
            Ok(Event {
                kind: EventKind::Put,
                record: Record {
                    key,
                    value,
                    revision: id,
                    create_revision: id,
                },
                prev: None,
            })
        }
        WriteOp::Update {
            key,
            value,
            expected,
        } => {
            let current = latest(conn, &key)?
                .filter(|row| !row.deleted)
                .ok_or(StoreError::NotFound)?;
            if current.id != expected {
                return Err(StoreError::Conflict {
                    current: current.id,
                });
            }
            let id = insert(
                conn,
                NewRow {
                    key: &key,
                    created: false,
                    deleted: false,
                    create_revision: current.create_revision,
                    prev_revision: current.id,
                    value: Some(&value),
                    old_value: Some(&current.value),
                },
            )?;
            Ok(Event {
                kind: EventKind::Put,
                prev: Some(Record {
                    key: key.clone(),
                    value: current.value,
                    revision: current.id,
                    create_revision: current.create_revision,
                }),
                record: Record {
                    key,
                    value,
                    revision: id,
                    create_revision: current.create_revision,
                },
            })
        }
        WriteOp::Delete { key, expected } => {
            let current = latest(conn, &key)?
                .filter(|row| !row.deleted)
                .ok_or(StoreError::NotFound)?;
            if let Some(expected) = expected {
                if current.id != expected {
                    return Err(StoreError::Conflict {
                        current: current.id,
                    });
                }
            }
            let id = insert(
                conn,
                NewRow {
                    key: &key,
                    created: false,
                    deleted: true,
                    create_revision: current.create_revision,
                    prev_revision: current.id,
                    value: None,
                    old_value: Some(&current.value),
                },
            )?;
            Ok(Event {
                kind: EventKind::Delete,
                record: Record {
                    key: key.clone(),
                    value: current.value.clone(),
                    revision: id,
                    create_revision: current.create_revision,
                },
                prev: Some(Record {
                    key,
                    value: current.value,
                    revision: current.id,
                    create_revision: current.create_revision,
                }),
            })
        }
    }
}

/// Compacts history up to `upto` (at most the current revision): removes every row superseded
/// by a row at or below it, and every tombstone at or below it. The state as of any revision
/// from `upto` on stays readable, and every event after `upto` stays in the table.
fn compact(conn: &Connection, upto: Revision) -> Result<Revision, StoreError> {
    let compacted = compacted_revision(conn)?;
    let upto = upto.min(current_revision(conn)?);
    if upto <= compacted {
        return Ok(compacted);
    }
    // Rows below `compacted` were handled by earlier compactions; the rows in
    // (compacted, upto] name the rows they superseded.
    let superseded = conn
        .prepare_cached(
            "DELETE FROM kv WHERE id IN
             (SELECT prev_revision FROM kv WHERE id > ?1 AND id <= ?2 AND prev_revision > 0)",
        )?
        .execute(params![compacted, upto])?;
    let tombstones = conn
        .prepare_cached("DELETE FROM kv WHERE deleted = 1 AND id > ?1 AND id <= ?2")?
        .execute(params![compacted, upto])?;
    conn.prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'compact_revision'")?
        .execute([upto])?;
    info!(
        from = compacted,
        to = upto,
        superseded,
        tombstones,
        "compacted"
    );
    Ok(upto)
}
