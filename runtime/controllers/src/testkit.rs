//! Shared by the controllers' store-backed tests: a store in a tempdir, fast resyncs, and
//! waiting for a condition.

use cairn_store::Store;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Polls `f` until it yields a value, failing the test after 8 s.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A SQLite store in `dir`, with the namespaces the tests create objects in (the registry
/// refuses objects in a namespace that does not exist, as the API server does).
pub async fn open_store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let store: Arc<dyn Store> =
        Arc::new(cairn_store::SqliteStore::open(&dir.path().join("state.db")).expect("open store"));
    let namespaces = cairn_api::resources::find("", "v1", "namespaces").expect("namespaces");
    for ns in ["default", "kube-system", "kube-node-lease", "other"] {
        let obj =
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        super::util::create(&*store, namespaces, obj)
            .await
            .expect("namespace");
    }
    store
}

/// A store in a fresh temporary directory (kept alive by the returned guard).
pub async fn temp_store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(&dir).await;
    (dir, store)
}

/// Loop options with a short resync, so tests do not wait long for a missed event.
pub fn opts() -> super::LoopOptions {
    super::LoopOptions {
        resync: Duration::from_secs(2),
    }
}
