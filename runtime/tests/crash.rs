//! `cairn server` killed with SIGKILL in the middle of a write burst: after a restart every
//! acknowledged write is there and the store is consistent.

mod common;
use common::http::{tls_for, token_for, Conn};
use common::Server;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn sigkill_mid_burst_loses_no_acknowledged_write() {
    let s = Server::start();
    let data = s.data_dir();
    let (tls, token, port) = (tls_for(&data), token_for(&data), s.port);
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (tls, token, acknowledged, stop) =
                (tls.clone(), token.clone(), acknowledged.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut conn = Conn::open(port, &tls, &token);
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let name = format!("burst-{w}-{i}");
                    let body = format!(
                        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"data":{{"i":"{i}"}}}}"#
                    );
                    // A request cut short by the kill panics this thread: that write was
                    // never acknowledged, which is all the test needs.
                    let (status, _) =
                        conn.request("POST", "/api/v1/namespaces/default/configmaps", body.as_bytes());
                    if status == 201 {
                        acknowledged.lock().expect("lock").push(name);
                    }
                }
            })
        })
        .collect();
    // Kill once the burst is well under way.
    while acknowledged.lock().expect("lock").len() < 300 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let dir = s.stop(); // SIGKILL
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    let acked = acknowledged.lock().expect("lock").clone();

    let s = Server::start_in(dir);
    let listed = s.ok(&["get", "cm", "-o", "jsonpath={.items[*].metadata.name}"]);
    let present: std::collections::HashSet<&str> = listed.split_whitespace().collect();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|n| !present.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // The store takes new writes and its revision moved on.
    s.ok(&["create", "configmap", "after-crash", "--from-literal=k=v"]);
    let db = rusqlite::Connection::open(s.data_dir().join("db/state.db")).expect("open db");
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
}
