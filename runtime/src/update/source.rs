//! Where a bundle is read from: a file, or HTTP(S) streamed straight into the installer
//! (no temporary copy). Over HTTPS the server's certificate is not checked: the bundle's
//! signature is what the device trusts, whatever carries it.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::io::Read;
use std::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}: {1}")]
    File(String, std::io::Error),
    #[error("{url}: {what}")]
    Http { url: String, what: String },
}

/// A blocking reader over body chunks that a task on the runtime sends.
pub struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => self.current = chunk,
                Ok(Err(e)) => return Err(std::io::Error::other(e)),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Opens `source`: a path, or an `http://` / `https://` URL fetched on `rt`.
pub fn open(
    source: &str,
    rt: &tokio::runtime::Runtime,
) -> Result<Box<dyn Read + Send>, SourceError> {
    if source.starts_with("http://") || source.starts_with("https://") {
        return http(source, rt).map(|r| Box::new(r) as Box<dyn Read + Send>);
    }
    let f = cairn_update::direct_io::ReadAhead::open(std::path::Path::new(source))
        .map_err(|e| SourceError::File(source.into(), e))?;
    Ok(Box::new(f))
}

fn http(url: &str, rt: &tokio::runtime::Runtime) -> Result<ChannelReader, SourceError> {
    let bad = |what: String| SourceError::Http {
        url: url.to_string(),
        what,
    };
    let uri: hyper::Uri = url.parse().map_err(|e| bad(format!("not a URL: {e}")))?;
    let tls = cairn_agent::probes::insecure_tls_config().map_err(bad)?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Empty<Bytes>>(connector);
    let response = rt
        .block_on(client.get(uri))
        .map_err(|e| bad(format!("cannot connect: {e}")))?;
    if !response.status().is_success() {
        return Err(bad(format!("the server answered {}", response.status())));
    }
    // A few chunks in flight: the download waits while the slot is written.
    let (tx, rx) = mpsc::sync_channel(8);
    let mut body = response.into_body();
    rt.spawn(async move {
        loop {
            match body.frame().await {
                None => break,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if tx.send(Ok(data)).is_err() {
                            break;
                        }
                    }
                }
                Some(Err(e)) => {
                    let _ = tx.send(Err(format!("download failed: {e}")));
                    break;
                }
            }
        }
    });
    Ok(ChannelReader {
        rx,
        current: Bytes::new(),
    })
}
