//! What `kubectl attach` reaches: a running container's own stdio. Its output is teed as it
//! is read from the shim's FIFOs, into the log and to every attached client; the write end
//! of its stdin FIFO is held here for the container's life (the shim would pass EOF to the
//! process as soon as no writer is left), shared by the attached clients, and closed after
//! the first attach that used it when the container has `stdinOnce` (then the shim is told
//! to close the process's stdin), as the kubelet does.

use super::logs::Stream;
use bytes::Bytes;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::unix::pipe;
use tokio::sync::{broadcast, Mutex};

/// Output chunks kept for a client that is slow to take them before it loses some.
const OUTPUT_BACKLOG: usize = 256;

/// One container instance's attachable streams.
pub struct Attachable {
    output: broadcast::Sender<(Stream, Bytes)>,
    stdin: Mutex<Option<pipe::Sender>>,
    stdin_once: bool,
}

impl Attachable {
    /// `stdin`: the FIFO's write end, when the container takes stdin.
    pub fn new(stdin: Option<pipe::Sender>, stdin_once: bool) -> Self {
        Attachable {
            output: broadcast::channel(OUTPUT_BACKLOG).0,
            stdin: Mutex::new(stdin),
            stdin_once,
        }
    }

    /// This, with the output channel of `earlier` (whose tees are already reading).
    pub fn with_output_of(mut self, earlier: Attachable) -> Self {
        self.output = earlier.output;
        self
    }

    /// `reader` (one of the container's outputs), handing what is read to attached clients.
    pub fn tee<R: AsyncRead + Unpin>(&self, reader: R, stream: Stream) -> Tee<R> {
        Tee {
            inner: reader,
            output: self.output.clone(),
            stream,
        }
    }

    /// The output from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<(Stream, Bytes)> {
        self.output.subscribe()
    }

    /// Whether the process's stdin is still open to clients.
    pub async fn takes_stdin(&self) -> bool {
        self.stdin.lock().await.is_some()
    }

    /// Writes a client's input to the process; false once stdin is closed.
    pub async fn write_stdin(&self, data: &[u8]) -> bool {
        let mut stdin = self.stdin.lock().await;
        match stdin.as_mut() {
            Some(w) => w.write_all(data).await.is_ok(),
            None => false,
        }
    }

    /// A client that wrote to stdin reached its end of input: with `stdinOnce`, stdin is
    /// closed to clients, and true says the caller is to close the process's (the shim
    /// holds the FIFO open itself, so only its CloseIO makes the process read EOF).
    pub async fn input_ended(&self) -> bool {
        self.stdin_once && self.stdin.lock().await.take().is_some()
    }
}

/// A container output that also feeds the attached clients.
pub struct Tee<R> {
    inner: R,
    output: broadcast::Sender<(Stream, Bytes)>,
    stream: Stream,
}

impl<R: AsyncRead + Unpin> AsyncRead for Tee<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                // Nobody attached: nothing to copy.
                if !new.is_empty() && this.output.receiver_count() > 0 {
                    let _ = this.output.send((this.stream, Bytes::copy_from_slice(new)));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn output_reaches_the_log_reader_and_every_client() {
        let a = Attachable::new(None, false);
        let mut first = a.subscribe();
        let mut second = a.subscribe();
        let mut tee = a.tee(&b"prompt$ "[..], Stream::Stdout);
        let mut logged = Vec::new();
        tee.read_to_end(&mut logged).await.unwrap();
        assert_eq!(logged, b"prompt$ ");
        for rx in [&mut first, &mut second] {
            let (stream, data) = rx.recv().await.unwrap();
            assert_eq!((stream, &data[..]), (Stream::Stdout, &b"prompt$ "[..]));
        }
        assert!(!a.takes_stdin().await);
        assert!(!a.write_stdin(b"x").await);
    }
}
