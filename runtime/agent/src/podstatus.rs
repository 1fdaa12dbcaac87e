//! What the agent knows about a pod's containers, and the pod `status` the API shows for it:
//! phase, conditions, IPs and per-container state, lastState, restartCount and readiness —
//! kubelet's rules, as pure functions over [`PodRecord`].

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum ContainerState {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: String,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        message: String,
        started_at: String,
        finished_at: String,
    },
}

impl ContainerState {
    pub fn waiting(reason: &str, message: impl Into<String>) -> Self {
        ContainerState::Waiting {
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self, ContainerState::Running { .. })
    }

    pub fn exit_code(&self) -> Option<i32> {
        match self {
            ContainerState::Terminated { exit_code, .. } => Some(*exit_code),
            _ => None,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            ContainerState::Waiting { reason, message } => {
                let mut w = json!({ "reason": reason });
                if !message.is_empty() {
                    w["message"] = json!(message);
                }
                json!({ "waiting": w })
            }
            ContainerState::Running { started_at } => {
                json!({"running": {"startedAt": started_at}})
            }
            ContainerState::Terminated {
                exit_code,
                reason,
                message,
                started_at,
                finished_at,
            } => {
                let mut t = json!({"exitCode": exit_code, "reason": reason,
                                   "startedAt": started_at, "finishedAt": finished_at});
                if !message.is_empty() {
                    t["message"] = json!(message);
                }
                json!({ "terminated": t })
            }
        }
    }
}

/// One container of a pod as the agent tracks it across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    pub image_id: String,
    /// containerd's id of the current (or last) instance.
    pub container_id: Option<String>,
    pub state: ContainerState,
    pub last_state: Option<ContainerState>,
    pub restart_count: u32,
    pub ready: bool,
    pub started: bool,
}

impl ContainerRecord {
    pub fn new(name: &str, image: &str) -> Self {
        ContainerRecord {
            name: name.into(),
            image: image.into(),
            image_id: String::new(),
            container_id: None,
            state: ContainerState::waiting("ContainerCreating", ""),
            last_state: None,
            restart_count: 0,
            ready: false,
            started: false,
        }
    }

    /// Waits (back-off, failed start) keeping a finished instance as `lastState`, as the
    /// kubelet does: a container waiting to restart still shows how it last ended.
    pub fn wait(&mut self, reason: &str, message: impl Into<String>) {
        if !matches!(self.state, ContainerState::Waiting { .. }) {
            self.last_state = Some(self.state.clone());
        }
        self.state = ContainerState::waiting(reason, message);
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "state": self.state.to_json(),
            "lastState": self.last_state.as_ref().map(ContainerState::to_json).unwrap_or_else(|| json!({})),
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.started,
        });
        if let Some(id) = &self.container_id {
            v["containerID"] = json!(format!("containerd://{id}"));
        }
        v
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            _ => RestartPolicy::Always,
        }
    }

    /// Whether a container that exited with `code` is started again.
    pub fn restarts(self, code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => code != 0,
            RestartPolicy::Never => false,
        }
    }
}

/// Everything the agent knows about one pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub restart_policy: RestartPolicy,
    pub host_ip: String,
    pub pod_ip: Option<String>,
    pub start_time: String,
    /// The sandbox (network namespace, volumes) is set up.
    pub sandbox_ready: bool,
    pub init_containers: Vec<ContainerRecord>,
    pub containers: Vec<ContainerRecord>,
    /// Set when the pod can't run at all (e.g. a volume can't be set up), shown as a reason.
    pub problem: Option<(String, String)>,
}

impl PodRecord {
    pub fn init_done(&self) -> bool {
        self.init_containers
            .iter()
            .all(|c| c.state.exit_code() == Some(0))
    }

    pub fn phase(&self) -> &'static str {
        let policy = self.restart_policy;
        if self
            .init_containers
            .iter()
            .any(|c| matches!(c.state.exit_code(), Some(code) if code != 0) && !policy.restarts(1))
        {
            return "Failed";
        }
        if !self.init_done() {
            return "Pending";
        }
        let total = self.containers.len();
        let (mut running, mut waiting, mut succeeded, mut failed) = (0, 0, 0, 0);
        for c in &self.containers {
            match &c.state {
                ContainerState::Running { .. } => running += 1,
                ContainerState::Terminated { exit_code, .. } => {
                    if *exit_code == 0 {
                        succeeded += 1
                    } else {
                        failed += 1
                    }
                }
                ContainerState::Waiting { .. } => {
                    // A container waiting to restart has run before: the pod is running.
                    if c.last_state.is_some() {
                        running += 1
                    } else {
                        waiting += 1
                    }
                }
            }
        }
        if waiting > 0 {
            return "Pending";
        }
        if running > 0 {
            return "Running";
        }
        if succeeded + failed == total && total > 0 {
            return match policy {
                RestartPolicy::Always => "Running",
                RestartPolicy::OnFailure if failed > 0 => "Running",
                _ if failed > 0 => "Failed",
                _ => "Succeeded",
            };
        }
        "Pending"
    }

    /// The pod's `status` object.
    pub fn status(&self, now: &str, previous: Option<&Value>) -> Value {
        let phase = self.phase();
        let initialized = self.init_done();
        let containers_ready = !self.containers.is_empty()
            && self.containers.iter().all(|c| c.ready)
            && phase == "Running";
        let not_ready: Vec<&str> = self
            .containers
            .iter()
            .filter(|c| !c.ready)
            .map(|c| c.name.as_str())
            .collect();
        let ready_msg = if not_ready.is_empty() {
            String::new()
        } else {
            format!("containers with unready status: [{}]", not_ready.join(" "))
        };
        let cond = |kind: &str, ok: bool, reason: &str, message: &str| {
            let status = if ok { "True" } else { "False" };
            let since = previous
                .and_then(|p| p.get("conditions"))
                .and_then(Value::as_array)
                .and_then(|a| a.iter().find(|c| c["type"] == kind))
                .filter(|c| c["status"] == status)
                .and_then(|c| c.get("lastTransitionTime").cloned())
                .unwrap_or_else(|| json!(now));
            let mut c = json!({"type": kind, "status": status, "lastProbeTime": null,
                               "lastTransitionTime": since});
            if !ok && !reason.is_empty() {
                c["reason"] = json!(reason);
                if !message.is_empty() {
                    c["message"] = json!(message);
                }
            }
            c
        };
        let ready_reason = if phase == "Succeeded" || phase == "Failed" {
            "PodCompleted"
        } else {
            "ContainersNotReady"
        };
        let mut status = json!({
            "phase": phase,
            "conditions": [
                cond("PodReadyToStartContainers", self.sandbox_ready, "", ""),
                cond("Initialized", initialized, if phase == "Succeeded" { "PodCompleted" } else { "ContainersNotInitialized" }, ""),
                cond("Ready", containers_ready, ready_reason, &ready_msg),
                cond("ContainersReady", containers_ready, ready_reason, &ready_msg),
                cond("PodScheduled", true, "", ""),
            ],
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "startTime": self.start_time,
            "qosClass": previous.and_then(|p| p.get("qosClass")).cloned().unwrap_or_else(|| json!("BestEffort")),
            "containerStatuses": self.containers.iter().map(ContainerRecord::to_json).collect::<Vec<_>>(),
        });
        if !self.init_containers.is_empty() {
            status["initContainerStatuses"] = self
                .init_containers
                .iter()
                .map(ContainerRecord::to_json)
                .collect();
        }
        if let Some(ip) = &self.pod_ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{ "ip": ip }]);
        }
        if let Some((reason, message)) = &self.problem {
            status["reason"] = json!(reason);
            status["message"] = json!(message);
        }
        status
    }
}

/// kubelet's restart back-off: 10 s doubling to 5 minutes, reset after 10 minutes of running.
pub fn backoff_delay(restart_count: u32) -> std::time::Duration {
    let secs = 10u64.saturating_mul(1u64 << restart_count.saturating_sub(1).min(5));
    std::time::Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(code: i32) -> ContainerState {
        ContainerState::Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: String::new(),
            started_at: "T0".into(),
            finished_at: "T1".into(),
        }
    }

    #[test]
    fn waiting_to_restart_keeps_how_the_container_last_ended() {
        let mut c = ContainerRecord::new("c", "busybox");
        c.state = term(137);
        c.wait("RunContainerError", "netns busy");
        c.wait("CrashLoopBackOff", "back-off 10s");
        assert_eq!(c.last_state, Some(term(137)));
        assert!(
            matches!(&c.state, ContainerState::Waiting { reason, .. } if reason == "CrashLoopBackOff")
        );
    }

    fn pod(policy: RestartPolicy, states: Vec<ContainerState>) -> PodRecord {
        PodRecord {
            uid: "u".into(),
            namespace: "default".into(),
            name: "p".into(),
            restart_policy: policy,
            host_ip: "10.0.0.1".into(),
            pod_ip: Some("10.42.0.5".into()),
            start_time: "T0".into(),
            sandbox_ready: true,
            init_containers: vec![],
            containers: states
                .into_iter()
                .enumerate()
                .map(|(i, s)| ContainerRecord {
                    state: s,
                    ..ContainerRecord::new(&format!("c{i}"), "busybox")
                })
                .collect(),
            problem: None,
        }
    }

    #[test]
    fn phases_follow_kubelet() {
        use RestartPolicy::*;
        let running = ContainerState::Running {
            started_at: "T".into(),
        };
        assert_eq!(
            pod(
                Always,
                vec![ContainerState::waiting("ContainerCreating", "")]
            )
            .phase(),
            "Pending"
        );
        assert_eq!(pod(Always, vec![running.clone()]).phase(), "Running");
        assert_eq!(pod(Never, vec![term(0)]).phase(), "Succeeded");
        assert_eq!(pod(Never, vec![term(0), term(1)]).phase(), "Failed");
        assert_eq!(pod(OnFailure, vec![term(0)]).phase(), "Succeeded");
        assert_eq!(pod(OnFailure, vec![term(2)]).phase(), "Running");
        assert_eq!(pod(Always, vec![term(0)]).phase(), "Running");
        let mut crash = pod(
            Always,
            vec![ContainerState::waiting("CrashLoopBackOff", "back-off")],
        );
        crash.containers[0].last_state = Some(term(1));
        assert_eq!(crash.phase(), "Running");
    }

    #[test]
    fn init_containers_gate_the_pod() {
        let mut p = pod(
            RestartPolicy::Always,
            vec![ContainerState::waiting("PodInitializing", "")],
        );
        p.init_containers = vec![ContainerRecord::new("init", "busybox")];
        assert_eq!(p.phase(), "Pending");
        let s = p.status("T", None);
        assert_eq!(s["conditions"][1]["type"], "Initialized");
        assert_eq!(s["conditions"][1]["status"], "False");
        assert!(s["initContainerStatuses"].is_array());
        p.init_containers[0].state = term(1);
        p.restart_policy = RestartPolicy::Never;
        assert_eq!(p.phase(), "Failed");
    }

    #[test]
    fn status_carries_ips_containers_and_readiness() {
        let mut p = pod(
            RestartPolicy::Always,
            vec![ContainerState::Running {
                started_at: "T".into(),
            }],
        );
        p.containers[0].container_id = Some("abc".into());
        p.containers[0].restart_count = 2;
        p.containers[0].last_state = Some(term(137));
        let s = p.status("T1", None);
        assert_eq!(s["podIP"], "10.42.0.5");
        assert_eq!(s["containerStatuses"][0]["containerID"], "containerd://abc");
        assert_eq!(s["containerStatuses"][0]["restartCount"], 2);
        assert_eq!(
            s["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
            137
        );
        assert_eq!(s["conditions"][2]["status"], "False");
        assert_eq!(
            s["conditions"][2]["message"],
            "containers with unready status: [c0]"
        );
        p.containers[0].ready = true;
        let s2 = p.status("T2", Some(&s));
        assert_eq!(s2["conditions"][2]["status"], "True");
        assert_eq!(s2["conditions"][2]["lastTransitionTime"], "T2");
        // PodScheduled did not change: its transition time stays.
        assert_eq!(s2["conditions"][4]["lastTransitionTime"], "T1");
    }

    #[test]
    fn backoff_doubles_to_five_minutes() {
        assert_eq!(backoff_delay(1).as_secs(), 10);
        assert_eq!(backoff_delay(2).as_secs(), 20);
        assert_eq!(backoff_delay(3).as_secs(), 40);
        assert_eq!(backoff_delay(10).as_secs(), 300);
    }
}
