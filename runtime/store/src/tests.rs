//! Tests of the store: the `Store` contract on `SqliteStore`, plus a crash test that SIGKILLs
//! a writing child process.

use super::sqlite::StoreOptions;
use super::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

fn open_temp() -> (TempDir, Arc<SqliteStore>) {
    open_temp_with(StoreOptions::default())
}

fn open_temp_with(options: StoreOptions) -> (TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open_with(&dir.path().join("state.db"), options).expect("open");
    (dir, Arc::new(store))
}

/// Rows in the table, live or not (to see what compaction removed).
fn row_count(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).expect("open raw");
    conn.query_row("SELECT COUNT(*) FROM kv", [], |r| r.get(0))
        .expect("count rows")
}

/// The compacted revision recorded in `meta`.
fn recorded_compaction(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).expect("open raw");
    conn.query_row(
        "SELECT value FROM meta WHERE name = 'compact_revision'",
        [],
        |r| r.get(0),
    )
    .expect("read compacted revision")
}

fn keys(list: &ListResult) -> Vec<&str> {
    list.records.iter().map(|r| r.key.as_str()).collect()
}

/// The next event, failing the test if none comes within 10 s.
async fn next_event(rx: &mut tokio::sync::mpsc::Receiver<std::sync::Arc<Event>>) -> Event {
    let shared = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("timed out waiting for an event")
        .expect("watch channel closed");
    std::sync::Arc::unwrap_or_clone(shared)
}

#[test]
fn prefix_end_bounds() {
    assert_eq!(prefix_end(""), None);
    assert_eq!(prefix_end("/a/").as_deref(), Some("/a0"));
    assert_eq!(prefix_end("ab").as_deref(), Some("ac"));
    assert_eq!(prefix_end("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
    assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
    assert_eq!(prefix_end("\u{10FFFF}"), None);
}

#[tokio::test]
async fn create_get_update_delete_recreate() {
    let (_dir, store) = open_temp();
    assert_eq!(store.current_revision().await.unwrap(), 0);
    assert_eq!(store.get("/a").await.unwrap(), None);

    let created = store.create("/a", b"v1".to_vec()).await.unwrap();
    assert_eq!(
        created,
        Record {
            key: "/a".into(),
            value: b"v1".to_vec(),
            revision: 1,
            create_revision: 1
        }
    );
    assert_eq!(store.get("/a").await.unwrap(), Some(created.clone()));
    assert_eq!(
        store.create("/a", b"again".to_vec()).await,
        Err(StoreError::AlreadyExists)
    );

    let updated = store.update("/a", b"v2".to_vec(), 1).await.unwrap();
    assert_eq!((updated.revision, updated.create_revision), (2, 1));
    assert_eq!(updated.value, b"v2");
    assert_eq!(
        store.update("/a", b"stale".to_vec(), 1).await,
        Err(StoreError::Conflict { current: 2 })
    );
    assert_eq!(
        store.update("/missing", b"x".to_vec(), 1).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(store.get("/a").await.unwrap().unwrap().value, b"v2");

    assert_eq!(
        store.delete("/a", Some(1)).await,
        Err(StoreError::Conflict { current: 2 })
    );
    let deleted = store.delete("/a", Some(2)).await.unwrap();
    assert_eq!(
        deleted,
        Record {
            key: "/a".into(),
            value: b"v2".to_vec(),
            revision: 3,
            create_revision: 1
        }
    );
    assert_eq!(store.get("/a").await.unwrap(), None);
    assert_eq!(store.delete("/a", None).await, Err(StoreError::NotFound));
    assert_eq!(
        store.update("/a", b"x".to_vec(), 3).await,
        Err(StoreError::NotFound)
    );

    let recreated = store.create("/a", b"v3".to_vec()).await.unwrap();
    assert_eq!((recreated.revision, recreated.create_revision), (4, 4));
    let unconditional = store.delete("/a", None).await.unwrap();
    assert_eq!(
        (unconditional.revision, unconditional.create_revision),
        (5, 4)
    );
    // Failed writes in between used up no revision.
    assert_eq!(store.current_revision().await.unwrap(), 5);
}

#[tokio::test]
async fn rejects_bad_input() {
    let (_dir, store) = open_temp();
    assert!(matches!(
        store.create("", b"x".to_vec()).await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert_eq!(
        store.create("/big", vec![0; MAX_VALUE_BYTES + 1]).await,
        Err(StoreError::TooLarge {
            size: MAX_VALUE_BYTES + 1,
            limit: MAX_VALUE_BYTES
        })
    );
    assert!(store.create("/max", vec![7; MAX_VALUE_BYTES]).await.is_ok());
    assert!(matches!(
        store.watch("/", -1).await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        store.compact(-1).await,
        Err(StoreError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn list_prefix_pagination_and_history() {
    let (_dir, store) = open_temp();
    for key in [
        "/registry/pods/ns1/a",
        "/registry/pods/ns1/b",
        "/registry/pods/ns1/c",
        "/registry/pods/ns2/d",
        "/registry/podsx/e",
        "/registry/services/s",
    ] {
        store.create(key, key.as_bytes().to_vec()).await.unwrap();
    }
    let all = store.list("/registry/pods/", None, 0, None).await.unwrap();
    assert_eq!(
        keys(&all),
        [
            "/registry/pods/ns1/a",
            "/registry/pods/ns1/b",
            "/registry/pods/ns1/c",
            "/registry/pods/ns2/d"
        ]
    );
    assert_eq!(all.revision, 6);
    assert!(!all.more);
    assert_eq!(all.records[0].value, b"/registry/pods/ns1/a");
    assert_eq!(store.count("/registry/pods/").await.unwrap(), 4);
    assert_eq!(store.count("/registry/").await.unwrap(), 6);
    assert_eq!(store.count("").await.unwrap(), 6);
    assert_eq!(
        store.list("", None, 0, None).await.unwrap().records.len(),
        6
    );

    // Page 1, then changes, then page 2 at page 1's revision: one consistent snapshot.
    let page1 = store.list("/registry/pods/", None, 2, None).await.unwrap();
    assert_eq!(
        keys(&page1),
        ["/registry/pods/ns1/a", "/registry/pods/ns1/b"]
    );
    assert!(page1.more);
    let a = store
        .update("/registry/pods/ns1/a", b"new".to_vec(), 1)
        .await
        .unwrap();
    store.delete("/registry/pods/ns1/c", None).await.unwrap();
    store
        .create("/registry/pods/ns1/bb", b"late".to_vec())
        .await
        .unwrap();
    let page2 = store
        .list(
            "/registry/pods/",
            Some("/registry/pods/ns1/b"),
            2,
            Some(page1.revision),
        )
        .await
        .unwrap();
    assert_eq!(
        keys(&page2),
        ["/registry/pods/ns1/c", "/registry/pods/ns2/d"]
    );
    assert!(!page2.more);
    assert_eq!(page2.revision, page1.revision);

    // Now: the update, the delete and the new key are visible.
    let now = store.list("/registry/pods/", None, 0, None).await.unwrap();
    assert_eq!(
        keys(&now),
        [
            "/registry/pods/ns1/a",
            "/registry/pods/ns1/b",
            "/registry/pods/ns1/bb",
            "/registry/pods/ns2/d"
        ]
    );
    assert_eq!(now.records[0], a);
    assert_eq!(now.revision, 9);
    // Exactly `limit` left: no more.
    let exact = store
        .list("/registry/pods/", Some("/registry/pods/ns1/b"), 2, None)
        .await
        .unwrap();
    assert_eq!(
        keys(&exact),
        ["/registry/pods/ns1/bb", "/registry/pods/ns2/d"]
    );
    assert!(!exact.more);

    // The past: at revision 1 only the first key existed, with its first value.
    let at1 = store.list("/registry/", None, 0, Some(1)).await.unwrap();
    assert_eq!(keys(&at1), ["/registry/pods/ns1/a"]);
    assert_eq!(at1.records[0].value, b"/registry/pods/ns1/a");
    assert_eq!(at1.revision, 1);
    let at0 = store.list("/registry/", None, 0, Some(0)).await.unwrap();
    assert!(at0.records.is_empty());
    assert_eq!(
        store.list("/registry/", None, 0, Some(10)).await,
        Err(StoreError::FutureRevision { current: 9 })
    );
}

#[tokio::test]
async fn watch_backlog_then_live_in_order() {
    let (_dir, store) = open_temp();
    store.create("/w/a", b"a1".to_vec()).await.unwrap(); // 1
    store.create("/w/b", b"b1".to_vec()).await.unwrap(); // 2
    store.create("/other/x", b"x".to_vec()).await.unwrap(); // 3
    store.update("/w/a", b"a2".to_vec(), 1).await.unwrap(); // 4

    let mut rx = store.watch("/w/", 1).await.unwrap();
    let e = next_event(&mut rx).await;
    assert_eq!(
        (e.kind, e.record.key.as_str(), e.record.revision),
        (EventKind::Put, "/w/b", 2)
    );
    assert_eq!(e.prev, None);
    let e = next_event(&mut rx).await;
    assert_eq!((e.kind, e.record.revision), (EventKind::Put, 4));
    assert_eq!(e.record.value, b"a2");
    let prev = e.prev.expect("update has a previous value");
    assert_eq!((prev.revision, prev.value.as_slice()), (1, &b"a1"[..]));

    // Live.
    store.create("/other/y", b"y".to_vec()).await.unwrap(); // 5
    store.delete("/w/b", Some(2)).await.unwrap(); // 6
    store.create("/w/b", b"b2".to_vec()).await.unwrap(); // 7
    let e = next_event(&mut rx).await;
    assert_eq!(e.kind, EventKind::Delete);
    assert_eq!(
        e.record,
        Record {
            key: "/w/b".into(),
            value: b"b1".to_vec(),
            revision: 6,
            create_revision: 2
        }
    );
    assert_eq!(e.prev.map(|p| p.revision), Some(2));
    let e = next_event(&mut rx).await;
    assert_eq!(
        (e.kind, e.record.revision, e.record.create_revision),
        (EventKind::Put, 7, 7)
    );
    assert_eq!(e.prev, None);

    // A watch from the current revision gets only what follows; the backlog of a delete
    // carries the same event as the live one did.
    let mut from_now = store.watch("/w/", 7).await.unwrap();
    let mut from_five = store.watch("/w/", 5).await.unwrap();
    let e = next_event(&mut from_five).await;
    assert_eq!(
        (e.kind, e.record.revision, e.record.value.as_slice()),
        (EventKind::Delete, 6, &b"b1"[..])
    );
    assert_eq!(
        e.prev.map(|p| (p.revision, p.value)),
        Some((2, b"b1".to_vec()))
    );
    store.update("/w/b", b"b3".to_vec(), 7).await.unwrap(); // 8
    assert_eq!(next_event(&mut from_now).await.record.revision, 8);
    assert_eq!(next_event(&mut from_five).await.record.revision, 7);
    assert_eq!(next_event(&mut from_five).await.record.revision, 8);
}

/// A backlog longer than the pages it is read in arrives whole and in order, then live
/// events follow; the watcher's channel holds only a few events at a time.
#[tokio::test]
async fn long_backlogs_are_read_page_by_page() {
    let (_dir, store) = open_temp();
    for i in 0..700 {
        store
            .create(&format!("/p/{i:04}"), i.to_string().into_bytes())
            .await
            .unwrap();
    }
    let mut rx = store.watch("/p/", 0).await.unwrap();
    for want in 1..=700 {
        let e = next_event(&mut rx).await;
        assert_eq!(e.record.revision, want, "in order, none lost");
    }
    store.create("/p/live", b"l".to_vec()).await.unwrap();
    assert_eq!(next_event(&mut rx).await.record.key, "/p/live");
}

/// Watches started in the middle of a write burst see every event exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_has_no_gap_and_no_duplicate_under_concurrent_writes() {
    let (_dir, store) = open_temp();
    const TASKS: usize = 4;
    const PER_TASK: usize = 60;
    let mut writers = Vec::new();
    for t in 0..TASKS {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                let key = format!("/race/{t}/{i}");
                let rec = store.create(&key, vec![1]).await.unwrap();
                if i % 3 == 0 {
                    store.update(&key, vec![2], rec.revision).await.unwrap();
                }
            }
        }));
    }
    // Start watches at different points of the burst.
    let mut watches = Vec::new();
    for at_least in [1, 40, 120] {
        while store.current_revision().await.unwrap() < at_least {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        watches.push(store.watch("/race/", 0).await.unwrap());
    }
    for w in writers {
        w.await.unwrap();
    }
    let total = store.current_revision().await.unwrap();
    assert_eq!(
        total as usize,
        TASKS * PER_TASK + TASKS * PER_TASK.div_ceil(3)
    );
    for mut rx in watches {
        let mut seen = Vec::new();
        while seen.len() < total as usize {
            seen.push(next_event(&mut rx).await.record.revision);
        }
        let expected: Vec<i64> = (1..=total).collect();
        assert_eq!(seen, expected);
    }
}

#[tokio::test]
async fn watch_prefix_only_sees_its_keys_and_ends_when_dropped() {
    let (_dir, store) = open_temp();
    let mut pods = store.watch("/pods/", 0).await.unwrap();
    let svcs = store.watch("/svcs/", 0).await.unwrap();
    drop(svcs); // its registration goes away by itself
    store.create("/svcs/a", vec![]).await.unwrap();
    store.create("/pods/a", vec![]).await.unwrap();
    let e = next_event(&mut pods).await;
    assert_eq!(e.record.key, "/pods/a");
    assert_eq!(e.record.revision, 2);
    drop(store);
    // The store is gone: the watch ends.
    let end = tokio::time::timeout(Duration::from_secs(10), pods.recv())
        .await
        .expect("watch did not end");
    assert_eq!(end, None);
}

#[tokio::test]
async fn slow_watcher_is_closed_not_waited_for() {
    let (_dir, store) = open_temp_with(StoreOptions {
        watch_buffer: 4,
        ..StoreOptions::default()
    });
    let mut rx = store.watch("/", 0).await.unwrap();
    // Nobody reads: the writer must go on and drop the watcher.
    for i in 0..40 {
        store.create(&format!("/k{i}"), vec![]).await.unwrap();
    }
    let mut received = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(e)) => received.push(e.record.revision),
            Ok(None) => break,
            Err(_) => panic!("a watcher that fell behind was not closed"),
        }
    }
    assert!(received.len() < 40, "received {}", received.len());
    // What it did get is a gap-free start of the stream.
    let expected: Vec<i64> = (1..=received.len() as i64).collect();
    assert_eq!(received, expected);
}

#[tokio::test]
async fn compaction_keeps_live_rows_and_current_state() {
    let (dir, store) = open_temp();
    let db = dir.path().join("state.db");
    for k in ["a", "b", "c", "d", "e"] {
        let mut rec = store
            .create(&format!("/c/{k}"), b"0".to_vec())
            .await
            .unwrap();
        for v in 1..5 {
            rec = store
                .update(
                    &format!("/c/{k}"),
                    format!("{v}").into_bytes(),
                    rec.revision,
                )
                .await
                .unwrap();
        }
    }
    store.delete("/c/b", None).await.unwrap();
    store.delete("/c/d", None).await.unwrap(); // the newest row is a tombstone
    let before = store.list("/c/", None, 0, None).await.unwrap();
    let current = store.current_revision().await.unwrap();
    assert_eq!(current, 27);
    assert_eq!(row_count(&db), 27);

    // Keep the last 4 revisions: rows 24..27 stay, the rest of history goes.
    let compacted = store.compact(4).await.unwrap();
    assert_eq!(compacted, 23);
    assert_eq!(recorded_compaction(&db), 23);
    assert_eq!(store.list("/c/", None, 0, None).await.unwrap(), before);
    // State as of the compacted revision is still readable; older is not.
    let at = store.list("/c/", None, 0, Some(23)).await.unwrap();
    assert_eq!(keys(&at), ["/c/a", "/c/b", "/c/c", "/c/d", "/c/e"]);
    assert_eq!(
        store.list("/c/", None, 0, Some(22)).await,
        Err(StoreError::Compacted { compacted: 23 })
    );
    // Events after the compacted revision are all still there.
    let mut rx = store.watch("/c/", 23).await.unwrap();
    for rev in 24..=27 {
        assert_eq!(next_event(&mut rx).await.record.revision, rev);
    }
    drop(rx);

    // Compact everything: only the live keys' current rows remain.
    assert_eq!(store.compact(0).await.unwrap(), 27);
    assert_eq!(row_count(&db), 3);
    assert_eq!(store.list("/c/", None, 0, None).await.unwrap(), before);
    assert_eq!(store.count("/c/").await.unwrap(), 3);
    for rec in &before.records {
        assert_eq!(store.get(&rec.key).await.unwrap().as_ref(), Some(rec));
    }
    assert_eq!(store.get("/c/b").await.unwrap(), None);
    // Compacting again is a no-op.
    assert_eq!(store.compact(0).await.unwrap(), 27);

    // Revisions are never reused, though the newest rows (tombstones) are gone.
    assert_eq!(store.current_revision().await.unwrap(), 27);
    let recreated = store.create("/c/d", b"again".to_vec()).await.unwrap();
    assert_eq!(recreated.revision, 28);
    let c = store.get("/c/c").await.unwrap().unwrap();
    assert_eq!(
        store
            .update("/c/c", b"5".to_vec(), c.revision)
            .await
            .unwrap()
            .revision,
        29
    );
    store.checkpoint().await.unwrap();
}

#[tokio::test]
async fn compaction_in_chunks_matches_one_pass() {
    let (dir, store) = open_temp_with(StoreOptions {
        compact_chunk: 3,
        ..StoreOptions::default()
    });
    let mut rec = store.create("/k", b"0".to_vec()).await.unwrap();
    for i in 0..20 {
        rec = store.update("/k", vec![i], rec.revision).await.unwrap();
        if i % 5 == 0 {
            store.create(&format!("/t{i}"), vec![]).await.unwrap();
            store.delete(&format!("/t{i}"), None).await.unwrap();
        }
    }
    let current = store.current_revision().await.unwrap();
    assert_eq!(store.compact(0).await.unwrap(), current);
    assert_eq!(row_count(&dir.path().join("state.db")), 1);
    assert_eq!(store.get("/k").await.unwrap(), Some(rec));
}

#[tokio::test]
async fn watch_after_compacted_revision_fails() {
    let (_dir, store) = open_temp();
    let mut rec = store.create("/k", vec![0]).await.unwrap();
    for i in 1..10 {
        rec = store.update("/k", vec![i], rec.revision).await.unwrap();
    }
    assert_eq!(store.compact(2).await.unwrap(), 8);
    assert_eq!(
        store.watch("/k", 7).await.err(),
        Some(StoreError::Compacted { compacted: 8 })
    );
    let mut rx = store.watch("/k", 8).await.unwrap();
    let e = next_event(&mut rx).await;
    assert_eq!(e.record.revision, 9);
    assert_eq!(e.prev.map(|p| p.revision), Some(8));
    assert_eq!(next_event(&mut rx).await.record.revision, 10);
}

#[tokio::test]
async fn compactor_task_runs() {
    let (dir, store) = open_temp();
    let db = dir.path().join("state.db");
    let wal = dir.path().join("state.db-wal");
    let mut rec = store.create("/k", vec![0]).await.unwrap();
    for i in 1..10 {
        rec = store.update("/k", vec![i], rec.revision).await.unwrap();
    }
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    store.spawn_compactor(Duration::from_millis(20), 3);
    // It compacts, then checkpoints the WAL down to nothing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while recorded_compaction(&db) != 7 || std::fs::metadata(&wal).unwrap().len() != 0 {
        assert!(Instant::now() < deadline, "compactor did not run");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.get("/k").await.unwrap(), Some(rec));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_get_unique_dense_revisions() {
    let (_dir, store) = open_temp();
    const TASKS: usize = 16;
    const PER_TASK: usize = 25;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..PER_TASK {
                let rec = store
                    .create(&format!("/cw/{t}/{i}"), format!("{t}-{i}").into_bytes())
                    .await
                    .unwrap();
                revisions.push(rec.revision);
            }
            revisions
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        let revisions = h.await.unwrap();
        // Each task's own writes are ordered.
        assert!(revisions.windows(2).all(|w| w[0] < w[1]));
        all.extend(revisions);
    }
    all.sort_unstable();
    let expected: Vec<i64> = (1..=(TASKS * PER_TASK) as i64).collect();
    assert_eq!(
        all, expected,
        "every write got its own revision, with no hole"
    );
    assert_eq!(store.count("/cw/").await.unwrap(), TASKS * PER_TASK);

    // Compare-and-swap races in one batch: exactly one of the writers wins.
    let base = store.create("/cas", b"0".to_vec()).await.unwrap();
    let mut racers = Vec::new();
    for t in 0..TASKS {
        let store = Arc::clone(&store);
        racers.push(tokio::spawn(async move {
            store.update("/cas", vec![t as u8], base.revision).await
        }));
    }
    let mut wins = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::Conflict { current }) => assert!(current > base.revision),
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(wins, 1);
}

#[tokio::test]
async fn reopen_keeps_state_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        store.create("/a", b"1".to_vec()).await.unwrap();
        store.create("/b", b"2".to_vec()).await.unwrap();
        store.delete("/b", None).await.unwrap();
        store.compact(0).await.unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.current_revision().await.unwrap(), 3);
    assert_eq!(recorded_compaction(&path), 3);
    assert_eq!(store.get("/a").await.unwrap().unwrap().value, b"1");
    assert_eq!(store.create("/b", vec![]).await.unwrap().revision, 4);
}

// ---------------------------------------------------------------------------------------------
// Crash durability: a child process writes as fast as it can and prints each acknowledged
// write; the parent SIGKILLs it mid-burst and checks that every acknowledged write survived.

const CRASH_CHILD_ENV: &str = "CAIRN_STORE_CRASH_CHILD_DB";
const CRASH_TEST_NAME: &str = "tests::acknowledged_writes_survive_sigkill";

#[test]
fn acknowledged_writes_survive_sigkill() {
    if let Some(db) = std::env::var_os(CRASH_CHILD_ENV) {
        crash_child(Path::new(&db));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            CRASH_TEST_NAME,
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_ENV, &db)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the writing child");
    let stdout = child.stdout.take().unwrap();

    // key -> (highest acknowledged version, its revision)
    let mut acked: BTreeMap<String, (u8, i64)> = BTreeMap::new();
    let mut acks = 0;
    let mut killed = false;
    // Lines the child wrote before it died are still read: they were acknowledged too.
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let Some(rest) = line.strip_prefix("ACK ") else {
            continue;
        };
        let mut parts = rest.split(' ');
        let (key, version, revision) = (
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().parse::<u8>().unwrap(),
            parts.next().unwrap().parse::<i64>().unwrap(),
        );
        let entry = acked.entry(key).or_insert((version, revision));
        if version >= entry.0 {
            *entry = (version, revision);
        }
        acks += 1;
        if !killed && acks >= 2000 {
            child.kill().expect("SIGKILL the child"); // std sends SIGKILL on Unix
            killed = true;
        }
    }
    let status = child.wait().unwrap();
    assert!(
        killed,
        "the child ended by itself ({status}) after {acks} acks"
    );
    assert!(!status.success());
    eprintln!(
        "child killed ({status}) after {acks} acknowledged writes on {} keys",
        acked.len()
    );

    let conn = rusqlite::Connection::open(&db).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    drop(conn);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(&db).unwrap();
        let current = store.current_revision().await.unwrap();
        for (key, (version, revision)) in &acked {
            let rec = store
                .get(key)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged {key} is lost"));
            assert!(
                rec.revision >= *revision,
                "{key}: {rec:?} older than ack {revision}"
            );
            let stored_version = rec.value[0];
            assert!(
                stored_version >= *version,
                "{key}: acknowledged v{version} lost"
            );
            assert!(*revision <= current);
        }
        // And the store still takes writes after the crash.
        let rec = store.create("/after-crash", vec![]).await.unwrap();
        assert_eq!(rec.revision, current + 1);
    });
}

/// The child's half: 8 tasks create and update keys until killed (or 60 s pass), printing
/// `ACK <key> <version> <revision>` after each acknowledged write.
fn crash_child(db: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Arc::new(SqliteStore::open(db).unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut tasks = Vec::new();
        for t in 0..8 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                let ack = |key: &str, version: u8, revision: i64| {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {key} {version} {revision}").unwrap();
                    out.flush().unwrap();
                };
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let key = format!("/crash/{t}/{i}");
                    let rec = store.create(&key, vec![1; 64]).await.unwrap();
                    ack(&key, 1, rec.revision);
                    let rec = store.update(&key, vec![2; 64], rec.revision).await.unwrap();
                    ack(&key, 2, rec.revision);
                    i += 1;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn crash_test_name_matches() {
    // The child is started by test name; keep the constant honest.
    let here = module_path!();
    let in_crate = here.split_once("::").map_or(here, |(_, path)| path);
    assert_eq!(
        format!("{in_crate}::acknowledged_writes_survive_sigkill"),
        CRASH_TEST_NAME
    );
}
