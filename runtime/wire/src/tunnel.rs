//! The tunnel between a node's agent and the server: one connection the agent opens (`GET
//! /cairn/v1/tunnel`, upgraded), on which the server speaks HTTP/2 as the client and the agent
//! answers. Logs and exec are plain HTTP/2 requests multiplexed on it, so a node needs no
//! inbound port.
//!
//! Requests on the tunnel:
//! - `POST /logs`, body = [`LogRequest`] JSON; answer 200 with the log bytes as the body
//!   (ends when the log stream ends), or an error status with the message as body.
//! - `POST /exec`, header `x-cairn-exec` = [`ExecRequest`] JSON; the request body carries
//!   frames from the client (stdin 0, resize 4, close 255) and the answer body frames to it
//!   (stdout 1, stderr 2, status 3). A frame is `[u8 channel][u32 BE length][data]`; the
//!   channel numbers are Kubernetes' remotecommand ones.
//! - `POST /attach`: as `/exec`, to the container's own process (the [`ExecRequest`]'s
//!   command is unused); the answer ends when the process exits or the client goes.
//! - `<METHOD> /proxy`, header `x-cairn-proxy` = [`ProxyRequest`] JSON: the agent sends the
//!   request (its method, headers and body) to the pod's IP and port over HTTP/1.1 and
//!   answers with the pod's answer (`pods/proxy`, `services/proxy`); 502 with the reason
//!   when the pod cannot be reached.
//! - `POST /portforward`, header `x-cairn-portforward` = [`PortForwardRequest`] JSON: the
//!   agent connects to the port on the pod's loopback, inside its network namespace (as the
//!   kubelet's runtime does); the request body is what goes to the port, the answer (200)
//!   what comes from it, until either side closes; an error status with the reason when the
//!   port cannot be reached.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hyper::StatusCode;
use serde::{Deserialize, Serialize};

pub const CHANNEL_STDIN: u8 = 0;
pub const CHANNEL_STDOUT: u8 = 1;
pub const CHANNEL_STDERR: u8 = 2;
pub const CHANNEL_ERROR: u8 = 3;
pub const CHANNEL_RESIZE: u8 = 4;
pub const CHANNEL_CLOSE: u8 = 255;

/// The header of a proxy request on the tunnel that carries the [`ProxyRequest`] as JSON.
pub const PROXY_HEADER: &str = "x-cairn-proxy";

/// The header of a port-forward request on the tunnel that carries the
/// [`PortForwardRequest`] as JSON.
pub const PORT_FORWARD_HEADER: &str = "x-cairn-portforward";

/// The header of an exec request on the tunnel that carries the [`ExecRequest`] as JSON.
pub const EXEC_HEADER: &str = "x-cairn-exec";
/// The `Upgrade` protocol of the tunnel.
pub const UPGRADE_PROTOCOL: &str = "cairn-tunnel";
/// The path the agent opens the tunnel on.
pub const TUNNEL_PATH: &str = "/cairn/v1/tunnel";

/// The largest frame accepted; stdin and output chunks are far smaller.
const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogRequest {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub follow: bool,
    pub tail_lines: Option<i64>,
    pub timestamps: bool,
    pub previous: bool,
    pub since_seconds: Option<i64>,
    pub since_time: Option<String>,
    pub limit_bytes: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecRequest {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// One HTTP request for a pod's port, relayed by its node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyRequest {
    pub namespace: String,
    pub pod: String,
    pub port: u16,
    /// The path and query to ask the pod for (`/`, `/metrics?x=1`).
    pub path: String,
}

/// One connection to a pod's port, forwarded by its node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortForwardRequest {
    pub namespace: String,
    pub pod: String,
    pub port: u16,
}

/// Headers that belong to one connection and are not relayed (RFC 9110 §7.6.1), and the
/// client's credentials for the API server, which are not the pod's business.
pub fn is_relayed_header(name: &str) -> bool {
    !matches!(
        name.to_ascii_lowercase().as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "host"
            | "authorization"
            | "proxy-authorization"
    )
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Internal(String),
}

impl StreamError {
    pub fn status(&self) -> StatusCode {
        match self {
            StreamError::NotFound(_) => StatusCode::NOT_FOUND,
            StreamError::BadRequest(_) => StatusCode::BAD_REQUEST,
            StreamError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            StreamError::NotFound(_) => "NotFound",
            StreamError::BadRequest(_) => "BadRequest",
            StreamError::Internal(_) => "InternalError",
        }
    }
}

/// One frame: `[channel][u32 BE length][data]`.
pub fn encode_frame(channel: u8, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + data.len());
    b.put_u8(channel);
    b.put_u32(data.len() as u32);
    b.put_slice(data);
    b.freeze()
}

/// Reassembles frames from body chunks, which may split or join frames anywhere.
#[derive(Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("frame of {0} bytes is larger than the limit")]
pub struct FrameTooLarge(pub usize);

impl FrameDecoder {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<(u8, Bytes)>, FrameTooLarge> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameTooLarge(len));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let channel = self.buf[0];
        self.buf.advance(5);
        Ok(Some((channel, self.buf.split_to(len).freeze())))
    }
}

/// The metav1.Status kubelet sends on the error channel when an exec ends.
pub fn exit_status(code: i32) -> serde_json::Value {
    if code == 0 {
        return serde_json::json!({"metadata": {}, "status": "Success"});
    }
    serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

pub fn error_status(e: &StreamError) -> serde_json::Value {
    serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": e.to_string(),
        "reason": e.reason(),
        "code": e.status().as_u16(),
    })
}

/// `{"Width": w, "Height": h}` as kubectl sends on the resize channel.
pub fn parse_resize(data: &[u8]) -> Option<(u16, u16)> {
    #[derive(Deserialize)]
    struct Size {
        #[serde(rename = "Width")]
        width: u16,
        #[serde(rename = "Height")]
        height: u16,
    }
    let s: Size = serde_json::from_slice(data).ok()?;
    Some((s.width, s.height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_split() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&encode_frame(CHANNEL_STDOUT, b"hello"));
        wire.extend_from_slice(&encode_frame(CHANNEL_STDERR, b""));
        wire.extend_from_slice(&encode_frame(CHANNEL_ERROR, br#"{"status":"Success"}"#));
        assert_eq!(&wire[..5], &[1, 0, 0, 0, 5]);
        for cut in 0..wire.len() {
            let mut d = FrameDecoder::default();
            let mut got = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                d.push(part);
                while let Some(f) = d.next_frame().expect("frame") {
                    got.push(f);
                }
            }
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(got[0], (CHANNEL_STDOUT, Bytes::from_static(b"hello")));
            assert_eq!(got[1], (CHANNEL_STDERR, Bytes::new()));
            assert_eq!(got[2].0, CHANNEL_ERROR);
        }
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut d = FrameDecoder::default();
        d.push(&[1, 0xff, 0xff, 0xff, 0xff]);
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn statuses_match_kubelet() {
        assert_eq!(exit_status(0)["status"], "Success");
        let s = exit_status(3);
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        let e = error_status(&StreamError::NotFound("container x not found".into()));
        assert_eq!(e["code"], 404);
        assert_eq!(e["message"], "container x not found");
    }

    #[test]
    fn resize_messages() {
        assert_eq!(parse_resize(br#"{"Width":80,"Height":24}"#), Some((80, 24)));
        assert_eq!(parse_resize(b"nonsense"), None);
    }
}
