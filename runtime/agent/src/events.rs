//! The kubelet's Events (Pulling, Pulled, Failed, BackOff, Created, Started, Killing,
//! Unhealthy, FailedMount, ...), sent to the API server by a task of their own so recording
//! never waits on the network: a pod starts as fast with events as without. When the queue is
//! full (the server away for long), events are dropped, as client-go's broadcaster drops them.

use cairn_wire::client::ApiClient;
use cairn_wire::events::{EventRecord, EventSource};
use tokio::sync::mpsc;

/// How many events wait for the server at most.
const QUEUE: usize = 1024;

/// Records events for this node's kubelet.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<EventRecord>,
}

impl Recorder {
    /// Starts the sending task; events are reported as `kubelet` on `node`.
    pub fn start(client: ApiClient, node: &str) -> Recorder {
        let (tx, rx) = mpsc::channel(QUEUE);
        let source = EventSource {
            component: "kubelet".into(),
            host: Some(node.to_string()),
        };
        tokio::spawn(send_loop(client, source, rx));
        Recorder { tx }
    }

    /// A recorder whose events go nowhere (tests of the pod machinery without a server).
    pub fn discard() -> Recorder {
        let (tx, _rx) = mpsc::channel(1);
        Recorder { tx }
    }

    pub fn record(&self, event: EventRecord) {
        if self.tx.try_send(event).is_err() {
            tracing::debug!("event queue full or closed; event dropped");
        }
    }
}

async fn send_loop(client: ApiClient, source: EventSource, mut rx: mpsc::Receiver<EventRecord>) {
    while let Some(ev) = rx.recv().await {
        if let Err(e) = send(&client, &source, &ev).await {
            tracing::debug!(reason = %ev.reason, error = %e, "event not recorded");
        }
    }
}

/// Creates the event's series, or counts one more occurrence on it.
async fn send(client: &ApiClient, source: &EventSource, ev: &EventRecord) -> Result<(), String> {
    let now = cairn_wire::time::now_rfc3339();
    let path = format!("/api/v1/namespaces/{}/events", ev.namespace());
    let item = format!("{path}/{}", ev.name(source));
    match client.get(&item).await.map_err(|e| e.to_string())? {
        Some(existing) => client
            .merge_patch(&item, &cairn_wire::events::repeat_patch(&existing, &now))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        None => match client.create(&path, &ev.to_event(source, &now)).await {
            Ok(_) => Ok(()),
            // Another send of the same series won the race: count this one on it.
            Err(e) if e.is_conflict() => Ok(()),
            Err(e) => Err(e.to_string()),
        },
    }
}
