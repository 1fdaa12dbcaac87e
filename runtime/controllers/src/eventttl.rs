//! Events expire: kube-apiserver stores them with a TTL (`--event-ttl`, 1 h by default); here a
//! loop deletes every Event last seen longer ago than the TTL.

use super::util;
use super::Controller;
use anyhow::Result;
use async_trait::async_trait;
use cairn_store::{Event, Store};
use std::time::Duration;

/// kube-apiserver's default `--event-ttl`.
pub const DEFAULT_EVENT_TTL: Duration = Duration::from_secs(3600);

pub struct EventTtl {
    pub ttl: Duration,
}

impl Default for EventTtl {
    fn default() -> Self {
        EventTtl {
            ttl: DEFAULT_EVENT_TTL,
        }
    }
}

/// The one work item: every Event is looked at in one pass.
const ALL: &str = "events";

#[async_trait]
impl Controller for EventTtl {
    fn name(&self) -> &'static str {
        "event-ttl"
    }

    fn prefixes(&self) -> Vec<String> {
        // Watched only to keep the loop's watch open: expiry is a matter of time, and each
        // sync asks to run again.
        cairn_api::resources::find("", "v1", "events")
            .map(|r| vec![r.key_prefix(None)])
            .unwrap_or_default()
    }

    async fn items_for(&self, _store: &dyn Store, _event: &Event) -> Vec<String> {
        Vec::new()
    }

    async fn all_items(&self, _store: &dyn Store) -> Result<Vec<String>> {
        Ok(vec![ALL.to_string()])
    }

    async fn sync(&self, store: &dyn Store, _item: &str) -> Result<Option<Duration>> {
        let events = cairn_api::resources::find("", "v1", "events")
            .ok_or_else(|| anyhow::anyhow!("events are missing from the resource table"))?;
        let now = cairn_wire::time::now_secs();
        let ttl = self.ttl.as_secs() as i64;
        for ev in util::list(store, &events.key_prefix(None)).await? {
            let expired = cairn_wire::events::last_seen(&ev).is_none_or(|t| t + ttl < now);
            if expired {
                util::delete(store, events, &ev).await?;
            }
        }
        // Look again in a minute, or sooner when the TTL is shorter.
        Ok(Some(Duration::from_secs((ttl / 2).clamp(1, 60) as u64)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{eventually, open_store};
    use cairn_wire::events::EventType;
    use serde_json::json;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_are_counted_and_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(&dir).await;
        let s = &*store;
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": "p", "namespace": "default", "uid": "u"}});
        for _ in 0..3 {
            util::record_event(s, "test", &pod, EventType::Warning, "BackOff", "again").await;
        }
        util::record_event(s, "test", &pod, EventType::Normal, "Started", "once").await;
        let events = cairn_api::resources::find("", "v1", "events").expect("events");
        let all = util::list(s, &events.key_prefix(Some("default")))
            .await
            .expect("list");
        assert_eq!(all.len(), 2);
        let backoff = all
            .iter()
            .find(|e| e["reason"] == "BackOff")
            .expect("BackOff");
        assert_eq!(backoff["count"], 3);
        assert_eq!(backoff["involvedObject"]["uid"], "u");
        let task = crate::spawn(
            EventTtl {
                ttl: Duration::from_secs(1),
            },
            store.clone(),
            crate::LoopOptions {
                resync: Duration::from_secs(1),
            },
        );
        eventually("the events expired", || async {
            let left = util::list(s, &events.key_prefix(None)).await.ok()?;
            left.is_empty().then_some(())
        })
        .await;
        task.abort();
    }
}
