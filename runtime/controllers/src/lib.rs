//! Controllers: the loops that make the cluster's actual state follow what its objects ask for.
//!
//! Each controller is a [`Controller`]: it names the store prefixes it watches, maps a watch
//! event to the work items (store keys) it makes dirty, and syncs one item at a time. The
//! decision inside each sync is a pure function over JSON values (`reconcile`, `schedule`,
//! `decide`), unit-tested without a server; the sync only reads the objects it needs from the
//! store and writes what the function asked for, with compare-and-swap on the revision read.
//!
//! [`run`] drives a controller: it lists every item (full resync), watches the prefixes after
//! the revision it started at, coalesces events into a de-duplicated work queue, retries
//! failed items with back-off, honours "look again after" requests, resyncs periodically, and
//! starts over (list + watch) when a watch ends (the watcher fell behind or the history it
//! asked for was compacted).
//!
//! Controllers write to the store directly, as the API server would after admission: they fill
//! in uid/creationTimestamp/generation on create, bump generation when a spec changes, and
//! delete as the API does (objects with finalizers, and pods bound to a node, are marked with
//! a deletionTimestamp instead of removed).

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod eventttl;
pub mod gc;
pub mod job;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod rbacaggregation;
pub mod replicaset;
pub mod scheduler;
pub mod service;
pub mod statefulset;
pub mod util;

#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

use anyhow::Result;
use async_trait::async_trait;
use cairn_store::{Event, Revision, Store};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// One controller: what it watches, how events map to work items, and how one item syncs.
#[async_trait]
pub trait Controller: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// The key prefixes whose events concern this controller.
    fn prefixes(&self) -> Vec<String>;

    /// The work items (store keys) an event makes dirty.
    async fn items_for(&self, store: &dyn Store, event: &Event) -> Vec<String>;

    /// Every work item there is (a full resync).
    async fn all_items(&self, store: &dyn Store) -> Result<Vec<String>>;

    /// Brings one item to its desired state. `Ok(Some(d))` asks to sync it again after `d`
    /// even if no event comes (a time-based condition such as minReadySeconds).
    async fn sync(&self, store: &dyn Store, item: &str) -> Result<Option<Duration>>;
}

/// How often each controller re-lists everything it owns when nothing happens.
#[derive(Clone, Copy, Debug)]
pub struct LoopOptions {
    pub resync: Duration,
}

impl Default for LoopOptions {
    fn default() -> Self {
        LoopOptions {
            resync: Duration::from_secs(30),
        }
    }
}

/// Starts every controller on the store (ReplicaSet, Deployment, garbage collector,
/// scheduler). The tasks run until the runtime stops (or their handles are aborted).
pub fn spawn_all(store: Arc<dyn Store>, event_ttl: Option<Duration>) -> Vec<JoinHandle<()>> {
    let opts = LoopOptions::default();
    let mut tasks = vec![
        spawn(
            replicaset::ReplicaSetController::default(),
            store.clone(),
            opts,
        ),
        spawn(
            replicaset::ReplicaSetController {
                kind: replicaset::Replicated::ReplicationController,
            },
            store.clone(),
            opts,
        ),
        spawn(deployment::DeploymentController, store.clone(), opts),
        spawn(daemonset::DaemonSetController, store.clone(), opts),
        spawn(statefulset::StatefulSetController, store.clone(), opts),
        spawn(job::JobController, store.clone(), opts),
        spawn(cronjob::CronJobController::default(), store.clone(), opts),
        // The collector's resync lists every key; its index follows the watch anyway.
        spawn(
            gc::GarbageCollector::default(),
            store.clone(),
            LoopOptions {
                resync: Duration::from_secs(300),
            },
        ),
        spawn(service::ServiceController, store.clone(), opts),
        spawn(
            endpoints::EndpointsController::default(),
            store.clone(),
            opts,
        ),
        spawn(namespace::NamespaceController, store.clone(), opts),
        spawn(nodeipam::NodeIpamController, store.clone(), opts),
        spawn(
            nodelifecycle::NodeLifecycleController::default(),
            store.clone(),
            opts,
        ),
        spawn(disruption::DisruptionController, store.clone(), opts),
        spawn(rbacaggregation::ClusterRoleAggregation, store.clone(), opts),
        spawn(scheduler::Scheduler, store.clone(), opts),
    ];
    if let Some(ttl) = event_ttl {
        tasks.push(spawn(eventttl::EventTtl { ttl }, store, opts));
    }
    tasks
}

/// Runs one controller on its own task.
pub fn spawn<C: Controller>(c: C, store: Arc<dyn Store>, opts: LoopOptions) -> JoinHandle<()> {
    tokio::spawn(run(Arc::new(c), store, opts))
}

/// A de-duplicating work queue with delayed items and per-item back-off.
#[derive(Default)]
struct WorkQueue {
    ready: VecDeque<String>,
    queued: HashSet<String>,
    later: HashMap<String, Instant>,
    failures: HashMap<String, u32>,
}

impl WorkQueue {
    fn add(&mut self, item: String) {
        self.later.remove(&item);
        if self.queued.insert(item.clone()) {
            self.ready.push_back(item);
        }
    }

    fn add_after(&mut self, item: String, after: Duration) {
        if self.queued.contains(&item) {
            return;
        }
        let at = Instant::now() + after;
        let e = self.later.entry(item).or_insert(at);
        if at < *e {
            *e = at;
        }
    }

    /// Moves due delayed items to the ready queue and takes the first ready one.
    fn pop(&mut self) -> Option<String> {
        let now = Instant::now();
        let due: Vec<String> = self
            .later
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for item in due {
            self.add(item);
        }
        let item = self.ready.pop_front()?;
        self.queued.remove(&item);
        Some(item)
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.later.values().min().copied()
    }

    fn succeeded(&mut self, item: &str) {
        self.failures.remove(item);
    }

    fn failed(&mut self, item: String) {
        let n = self.failures.entry(item.clone()).or_insert(0);
        *n = (*n + 1).min(16);
        let delay = Duration::from_millis(10u64 << (*n - 1).min(10)).min(Duration::from_secs(10));
        self.add_after(item, delay);
    }
}

/// Watches every prefix after `after` and merges the events into one channel; `None` on the
/// channel means one of the watches ended and the caller must start over.
async fn merged_watch(
    store: &Arc<dyn Store>,
    prefixes: &[String],
    after: Revision,
) -> Result<(mpsc::Receiver<Option<Arc<Event>>>, Vec<JoinHandle<()>>)> {
    let (tx, rx) = mpsc::channel(1024);
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    for prefix in prefixes {
        let mut inner = match store.watch(prefix, after).await {
            Ok(w) => w,
            Err(e) => {
                for t in &tasks {
                    t.abort();
                }
                return Err(e.into());
            }
        };
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(ev) = inner.recv().await {
                if tx.send(Some(ev)).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(None).await;
        }));
    }
    Ok((rx, tasks))
}

/// Drives a controller forever: list, watch, sync dirty items, resync periodically.
pub async fn run<C: Controller>(c: Arc<C>, store: Arc<dyn Store>, opts: LoopOptions) {
    let name = c.name();
    let mut restart_delay = Duration::from_millis(100);
    loop {
        let started = async {
            let rev = store.current_revision().await?;
            let items = c.all_items(&*store).await?;
            let (events, tasks) = merged_watch(&store, &c.prefixes(), rev).await?;
            anyhow::Ok((items, events, tasks))
        }
        .await;
        let (items, mut events, tasks) = match started {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(controller = name, error = %e, "cannot start; retrying");
                tokio::time::sleep(restart_delay).await;
                restart_delay = (restart_delay * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        restart_delay = Duration::from_millis(100);
        let mut queue = WorkQueue::default();
        for item in items {
            queue.add(item);
        }
        let mut next_resync = Instant::now() + opts.resync;
        'watching: loop {
            // Take every event already waiting, so a burst syncs each item once.
            loop {
                match events.try_recv() {
                    Ok(Some(ev)) => {
                        for item in c.items_for(&*store, &ev).await {
                            queue.add(item);
                        }
                    }
                    Ok(None) | Err(mpsc::error::TryRecvError::Disconnected) => break 'watching,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                }
            }
            if let Some(item) = queue.pop() {
                match c.sync(&*store, &item).await {
                    Ok(again) => {
                        queue.succeeded(&item);
                        if let Some(d) = again {
                            queue.add_after(item, d);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(controller = name, %item, error = %e, "sync failed; will retry");
                        queue.failed(item);
                    }
                }
                continue;
            }
            let deadline = queue
                .next_deadline()
                .map_or(next_resync, |d| d.min(next_resync));
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Some(ev)) => {
                        for item in c.items_for(&*store, &ev).await {
                            queue.add(item);
                        }
                    }
                    _ => break 'watching,
                },
                _ = tokio::time::sleep_until(deadline) => {}
            }
            if Instant::now() >= next_resync {
                match c.all_items(&*store).await {
                    Ok(items) => items.into_iter().for_each(|i| queue.add(i)),
                    Err(e) => tracing::warn!(controller = name, error = %e, "resync failed"),
                }
                next_resync = Instant::now() + opts.resync;
            }
        }
        for t in tasks {
            t.abort();
        }
        tracing::debug!(controller = name, "watch ended; listing again");
    }
}

#[cfg(test)]
mod queue_tests {
    use super::*;

    #[tokio::test]
    async fn queue_dedups_and_delays() {
        let mut q = WorkQueue::default();
        q.add("a".into());
        q.add("b".into());
        q.add("a".into());
        assert_eq!(q.pop().as_deref(), Some("a"));
        assert_eq!(q.pop().as_deref(), Some("b"));
        assert_eq!(q.pop(), None);
        q.add_after("c".into(), Duration::from_millis(20));
        assert_eq!(q.pop(), None);
        assert!(q.next_deadline().is_some());
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(q.pop().as_deref(), Some("c"));
        q.failed("d".into());
        assert!(q.next_deadline().is_some());
        // An event for a delayed item makes it ready at once.
        q.add("d".into());
        assert_eq!(q.pop().as_deref(), Some("d"));
    }
}
