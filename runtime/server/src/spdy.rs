//! SPDY/3.1, the server's side, as kubectl's port-forward speaks it (directly after an
//! `Upgrade: SPDY/3.1`, or tunnelled in WebSocket binary messages by kubectl 1.31 and
//! newer).
//!
//! Hand-written because no crate under a licence we can ship serves SPDY/3.1 (the one Rust
//! implementation is a GPL client). It is the subset spdystream, the Go library on kubectl's
//! side, uses: the client opens streams (SYN_STREAM) and the server accepts each with a
//! SYN_REPLY before any data; DATA frames carry bytes, FIN half-closes; RST_STREAM aborts a
//! stream; PINGs are echoed; GOAWAY ends the session. Header blocks are one zlib stream per
//! direction, primed with the protocol's dictionary and sync-flushed per frame. spdystream
//! does no flow control, so WINDOW_UPDATE and SETTINGS are read and ignored, and a stream's
//! reader that falls behind holds up the session's reading (bounded channels), as in Go.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use std::collections::HashMap;
use std::sync::OnceLock;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const FLAG_FIN: u8 = 0x01;

/// RST_STREAM status: the stream was refused.
pub const REFUSED_STREAM: u32 = 3;
/// RST_STREAM status: a protocol rule was broken.
pub const PROTOCOL_ERROR: u32 = 1;

/// The largest frame read (the 24-bit length allows 16 MiB; spdystream writes what one
/// `Write` got, 32 KiB from `io.Copy`).
const MAX_FRAME: usize = 1 << 20;
/// The largest decompressed header block.
const MAX_HEADER_BLOCK: usize = 64 << 10;
/// The largest DATA frame written.
const MAX_DATA: usize = 32 << 10;

/// Header names (lower case, as SPDY writes them) and values.
pub type Headers = Vec<(String, String)>;

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("reading the SPDY session: {0}")]
    Io(#[from] std::io::Error),
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
}

fn protocol(msg: impl Into<String>) -> SpdyError {
    SpdyError::Protocol(msg.into())
}

/// The zlib dictionary of SPDY/3 header blocks (SPDY Protocol Draft 3, §2.6.10.1): these
/// words, each after its 32-bit length, then the status and date fragments.
fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
            "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
            "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
            "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
            "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
            "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
            "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8",
            "charset=iso-8859-1,utf-,*,enq=0.",
        );
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

/// `[u32 count]` then `[u32 len][name][u32 len][value]` per header.
fn encode_header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.put_u32(headers.len() as u32);
    for (name, value) in headers {
        b.put_u32(name.len() as u32);
        b.put_slice(name.to_ascii_lowercase().as_bytes());
        b.put_u32(value.len() as u32);
        b.put_slice(value.as_bytes());
    }
    b
}

fn decode_header_block(mut b: &[u8]) -> Result<Headers, SpdyError> {
    fn take<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], SpdyError> {
        if b.len() < 4 {
            return Err(protocol("header block ends early"));
        }
        let len = b.get_u32() as usize;
        if b.len() < len {
            return Err(protocol("header block ends early"));
        }
        let (v, rest) = b.split_at(len);
        *b = rest;
        Ok(v)
    }
    if b.len() < 4 {
        return Err(protocol("header block ends early"));
    }
    let count = b.get_u32() as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = String::from_utf8_lossy(take(&mut b)?).to_ascii_lowercase();
        // Several values of one name are joined by NUL.
        let value = String::from_utf8_lossy(take(&mut b)?).into_owned();
        for v in value.split('\0') {
            headers.push((name.clone(), v.to_string()));
        }
    }
    Ok(headers)
}

/// The session's incoming header stream.
struct HeaderReader {
    z: Decompress,
}

impl HeaderReader {
    fn new() -> Self {
        HeaderReader {
            z: Decompress::new(true),
        }
    }

    fn read(&mut self, mut block: &[u8]) -> Result<Headers, SpdyError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        loop {
            let (in_before, out_before) = (self.z.total_in(), out.len());
            match self
                .z
                .decompress_vec(block, &mut out, FlushDecompress::Sync)
            {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(dictionary())
                        .map_err(|e| protocol(format!("header dictionary: {e}")))?;
                }
                Err(e) => return Err(protocol(format!("header block: {e}"))),
            }
            block = &block[(self.z.total_in() - in_before) as usize..];
            let progressed = self.z.total_in() > in_before || out.len() > out_before;
            if block.is_empty() && out.len() < out.capacity() {
                break;
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(protocol("header block too large"));
            }
            if out.len() == out.capacity() {
                out.reserve(4096);
            } else if !progressed && !block.is_empty() {
                return Err(protocol("header block does not inflate"));
            }
        }
        decode_header_block(&out)
    }
}

/// The session's outgoing header stream.
struct HeaderWriter {
    z: Compress,
}

impl HeaderWriter {
    fn new() -> Self {
        let mut z = Compress::new(Compression::default(), true);
        // Cannot fail on a fresh stream; without it the block is still valid zlib.
        let _ = z.set_dictionary(dictionary());
        HeaderWriter { z }
    }

    fn write(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let raw = encode_header_block(headers);
        let mut input = raw.as_slice();
        let mut out = Vec::with_capacity(raw.len() + 64);
        loop {
            let before = self.z.total_in();
            if self
                .z
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .is_err()
            {
                break;
            }
            input = &input[(self.z.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            out.reserve(256);
        }
        out
    }
}

fn control_frame(kind: u16, flags: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + payload.len());
    b.put_u16(0x8000 | VERSION);
    b.put_u16(kind);
    b.put_u8(flags);
    b.put_uint(payload.len() as u64, 3);
    b.put_slice(payload);
    b.freeze()
}

fn data_frame(stream: u32, fin: bool, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + data.len());
    b.put_u32(stream & 0x7fff_ffff);
    b.put_u8(if fin { FLAG_FIN } else { 0 });
    b.put_uint(data.len() as u64, 3);
    b.put_slice(data);
    b.freeze()
}

/// A frame as the session reads it.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    SynStream {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    Reset {
        stream: u32,
    },
    Ping {
        id: u32,
    },
    GoAway,
    /// SETTINGS, WINDOW_UPDATE, NOOP, and replies or headers (of streams the server did not
    /// open; their header blocks are still inflated to keep the zlib stream in step).
    Other,
}

async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    headers: &mut HeaderReader,
) -> Result<Option<Frame>, SpdyError> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    if len > MAX_FRAME {
        return Err(protocol(format!("frame of {len} bytes is over the limit")));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    if head[0] & 0x80 == 0 {
        return Ok(Some(Frame::Data {
            stream: u32::from_be_bytes([head[0], head[1], head[2], head[3]]),
            fin: flags & FLAG_FIN != 0,
            data: Bytes::from(payload),
        }));
    }
    let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
    if version != VERSION {
        return Err(protocol(format!(
            "SPDY version {version}; only 3 is spoken"
        )));
    }
    let kind = u16::from_be_bytes([head[2], head[3]]);
    parse_control(kind, flags, &payload, headers).map(Some)
}

fn stream_id(b: &[u8]) -> Result<u32, SpdyError> {
    match b {
        [a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d]) & 0x7fff_ffff),
        _ => Err(protocol("control frame too short")),
    }
}

fn parse_control(
    kind: u16,
    flags: u8,
    payload: &[u8],
    headers: &mut HeaderReader,
) -> Result<Frame, SpdyError> {
    Ok(match kind {
        SYN_STREAM => {
            if payload.len() < 10 {
                return Err(protocol("SYN_STREAM too short"));
            }
            Frame::SynStream {
                stream: stream_id(payload)?,
                fin: flags & FLAG_FIN != 0,
                headers: headers.read(&payload[10..])?,
            }
        }
        SYN_REPLY | HEADERS => {
            if payload.len() < 4 {
                return Err(protocol("header frame too short"));
            }
            headers.read(&payload[4..])?;
            Frame::Other
        }
        RST_STREAM => Frame::Reset {
            stream: stream_id(payload)?,
        },
        PING => match payload {
            [a, b, c, d, ..] => Frame::Ping {
                id: u32::from_be_bytes([*a, *b, *c, *d]),
            },
            _ => return Err(protocol("PING too short")),
        },
        GOAWAY => Frame::GoAway,
        _ => Frame::Other,
    })
}

/// What the session's writer sends, in order.
enum Outgoing {
    Reply(u32),
    Data { stream: u32, fin: bool, data: Bytes },
    Reset { stream: u32, status: u32 },
    Ping(u32),
}

/// One stream the client opened.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// What the client sends on it; ends at its FIN, a reset or the session's end.
    pub incoming: mpsc::Receiver<Bytes>,
    pub writer: StreamWriter,
}

impl Stream {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The server's half of a stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Outgoing>,
    reset: watch::Receiver<bool>,
}

/// The stream or the session is gone.
#[derive(Debug, thiserror::Error)]
#[error("the SPDY stream is closed")]
pub struct Closed;

impl StreamWriter {
    /// Sends `data` (in frames of at most 32 KiB).
    pub async fn send(&self, data: Bytes) -> Result<(), Closed> {
        for chunk in data.chunks(MAX_DATA) {
            if *self.reset.borrow() {
                return Err(Closed);
            }
            let data = data.slice_ref(chunk);
            self.out
                .send(Outgoing::Data {
                    stream: self.id,
                    fin: false,
                    data,
                })
                .await
                .map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// Half-closes the server's side (an empty DATA frame with FIN).
    pub async fn finish(&self) {
        let _ = self
            .out
            .send(Outgoing::Data {
                stream: self.id,
                fin: true,
                data: Bytes::new(),
            })
            .await;
    }

    /// Aborts the stream with a RST_STREAM of `status`.
    pub async fn reset(&self, status: u32) {
        let _ = self
            .out
            .send(Outgoing::Reset {
                stream: self.id,
                status,
            })
            .await;
    }

    /// Resolves when the client reset the stream or the session ended.
    pub async fn closed_by_peer(&mut self) {
        let _ = self.reset.wait_for(|r| *r).await;
    }
}

struct Open {
    data: Option<mpsc::Sender<Bytes>>,
    reset: watch::Sender<bool>,
}

/// Serves a SPDY session on `io`: every stream the client opens is accepted and handed
/// out; the channel ends with the session.
pub fn serve<IO>(io: IO) -> mpsc::Receiver<Stream>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(64);
    let (streams_tx, streams_rx) = mpsc::channel::<Stream>(16);
    tokio::spawn(async move {
        let mut headers = HeaderWriter::new();
        while let Some(o) = out_rx.recv().await {
            let frame = match o {
                Outgoing::Reply(id) => {
                    let mut p = id.to_be_bytes().to_vec();
                    p.extend_from_slice(&headers.write(&[]));
                    control_frame(SYN_REPLY, 0, &p)
                }
                Outgoing::Data { stream, fin, data } => data_frame(stream, fin, &data),
                Outgoing::Reset { stream, status } => {
                    let mut p = stream.to_be_bytes().to_vec();
                    p.extend_from_slice(&status.to_be_bytes());
                    control_frame(RST_STREAM, 0, &p)
                }
                Outgoing::Ping(id) => control_frame(PING, 0, &id.to_be_bytes()),
            };
            if wr.write_all(&frame).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut headers = HeaderReader::new();
        let mut open: HashMap<u32, Open> = HashMap::new();
        loop {
            let frame = match read_frame(&mut rd, &mut headers).await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "SPDY session ended");
                    break;
                }
            };
            match frame {
                Frame::SynStream {
                    stream,
                    fin,
                    headers,
                } => {
                    if open.contains_key(&stream) || stream % 2 == 0 {
                        let _ = out_tx
                            .send(Outgoing::Reset {
                                stream,
                                status: PROTOCOL_ERROR,
                            })
                            .await;
                        continue;
                    }
                    let (data_tx, data_rx) = mpsc::channel(32);
                    let (reset_tx, reset_rx) = watch::channel(false);
                    // The reply goes out before anything the stream's user writes.
                    if out_tx.send(Outgoing::Reply(stream)).await.is_err() {
                        break;
                    }
                    open.insert(
                        stream,
                        Open {
                            data: (!fin).then_some(data_tx),
                            reset: reset_tx,
                        },
                    );
                    let s = Stream {
                        id: stream,
                        headers,
                        incoming: data_rx,
                        writer: StreamWriter {
                            id: stream,
                            out: out_tx.clone(),
                            reset: reset_rx,
                        },
                    };
                    if streams_tx.send(s).await.is_err() {
                        break;
                    }
                }
                Frame::Data { stream, fin, data } => {
                    let Some(entry) = open.get_mut(&stream) else {
                        continue;
                    };
                    if !data.is_empty() {
                        if let Some(tx) = &entry.data {
                            // A user that dropped its reader no longer wants the bytes.
                            if tx.send(data).await.is_err() {
                                entry.data = None;
                            }
                        }
                    }
                    if fin {
                        entry.data = None;
                    }
                }
                Frame::Reset { stream } => {
                    if let Some(entry) = open.remove(&stream) {
                        let _ = entry.reset.send(true);
                    }
                }
                Frame::Ping { id } => {
                    if out_tx.send(Outgoing::Ping(id)).await.is_err() {
                        break;
                    }
                }
                Frame::GoAway => break,
                Frame::Other => {}
            }
        }
        for (_, entry) in open.drain() {
            let _ = entry.reset.send(true);
        }
    });
    streams_rx
}

#[cfg(test)]
pub(crate) mod client {
    //! The client's side, for tests: opens streams as spdystream does.
    use super::*;

    pub struct Client {
        rd: tokio::io::ReadHalf<tokio::io::DuplexStream>,
        wr: tokio::io::WriteHalf<tokio::io::DuplexStream>,
        hr: HeaderReader,
        hw: HeaderWriter,
    }

    pub enum Got {
        Reply(u32),
        Data(u32, bool, Bytes),
        Reset(u32),
        Ping(u32),
    }

    impl Client {
        pub fn new(io: tokio::io::DuplexStream) -> Self {
            let (rd, wr) = tokio::io::split(io);
            Client {
                rd,
                wr,
                hr: HeaderReader::new(),
                hw: HeaderWriter::new(),
            }
        }

        pub async fn open(&mut self, id: u32, headers: &[(&str, &str)], fin: bool) {
            let mut p = id.to_be_bytes().to_vec();
            p.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            p.extend_from_slice(&self.hw.write(headers));
            let f = control_frame(SYN_STREAM, if fin { FLAG_FIN } else { 0 }, &p);
            self.wr.write_all(&f).await.unwrap();
        }

        pub async fn send(&mut self, id: u32, data: &[u8], fin: bool) {
            self.wr.write_all(&data_frame(id, fin, data)).await.unwrap();
        }

        pub async fn raw(&mut self, frame: Bytes) {
            self.wr.write_all(&frame).await.unwrap();
        }

        pub async fn next(&mut self) -> Option<Got> {
            loop {
                let mut head = [0u8; 8];
                self.rd.read_exact(&mut head).await.ok()?;
                let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
                let mut p = vec![0u8; len];
                self.rd.read_exact(&mut p).await.ok()?;
                if head[0] & 0x80 == 0 {
                    let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
                    return Some(Got::Data(id, head[4] & FLAG_FIN != 0, Bytes::from(p)));
                }
                let kind = u16::from_be_bytes([head[2], head[3]]);
                let id = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
                match kind {
                    SYN_REPLY => {
                        assert!(self.hr.read(&p[4..]).unwrap().is_empty());
                        return Some(Got::Reply(id));
                    }
                    RST_STREAM => return Some(Got::Reset(id)),
                    PING => return Some(Got::Ping(id)),
                    _ => continue,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client::{Client, Got};
    use super::*;

    #[test]
    fn the_dictionary_is_the_protocols() {
        // Length and Adler-32 of the SPDY/3 dictionary; zlib checks the latter.
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        let (mut a, mut b) = (1u32, 0u32);
        for &x in d {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn header_blocks_share_one_zlib_stream_per_direction() {
        let (mut w, mut r) = (HeaderWriter::new(), HeaderReader::new());
        for i in 0..3 {
            let id = i.to_string();
            let block = w.write(&[("streamType", "data"), ("port", "8080"), ("requestID", &id)]);
            let h = r.read(&block).expect("headers");
            assert_eq!(
                h,
                vec![
                    ("streamtype".to_string(), "data".to_string()),
                    ("port".to_string(), "8080".to_string()),
                    ("requestid".to_string(), id),
                ]
            );
        }
        assert!(HeaderReader::new().read(b"not zlib at all").is_err());
    }

    #[test]
    fn frames_are_laid_out_as_the_spec_says() {
        assert_eq!(
            &control_frame(PING, 0, &7u32.to_be_bytes())[..],
            &[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 7]
        );
        assert_eq!(
            &data_frame(5, true, b"hi")[..],
            &[0, 0, 0, 5, 1, 0, 0, 2, b'h', b'i']
        );
    }

    #[tokio::test]
    async fn streams_are_accepted_and_carry_data_both_ways() {
        let (server_io, client_io) = tokio::io::duplex(1 << 16);
        let mut streams = serve(server_io);
        let mut c = Client::new(client_io);
        c.open(1, &[("streamType", "error"), ("requestID", "0")], true)
            .await;
        c.open(3, &[("streamType", "data"), ("requestID", "0")], false)
            .await;
        assert!(matches!(c.next().await, Some(Got::Reply(1))));
        assert!(matches!(c.next().await, Some(Got::Reply(3))));
        let mut error = streams.recv().await.expect("error stream");
        assert_eq!(error.header("streamtype"), Some("error"));
        assert!(error.incoming.recv().await.is_none(), "opened half-closed");
        let mut data = streams.recv().await.expect("data stream");
        assert_eq!(data.header("requestid"), Some("0"));

        c.send(3, b"ping", false).await;
        assert_eq!(data.incoming.recv().await.as_deref(), Some(&b"ping"[..]));
        data.writer.send(Bytes::from_static(b"pong")).await.unwrap();
        data.writer.finish().await;
        match c.next().await {
            Some(Got::Data(3, false, d)) => assert_eq!(&d[..], b"pong"),
            _ => panic!("expected data"),
        }
        assert!(matches!(c.next().await, Some(Got::Data(3, true, _))));
        c.send(3, b"", true).await;
        assert!(data.incoming.recv().await.is_none());

        c.raw(control_frame(PING, 0, &1u32.to_be_bytes())).await;
        assert!(matches!(c.next().await, Some(Got::Ping(1))));

        let mut p = 3u32.to_be_bytes().to_vec();
        p.extend_from_slice(&5u32.to_be_bytes());
        c.raw(control_frame(RST_STREAM, 0, &p)).await;
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            data.writer.closed_by_peer(),
        )
        .await
        .expect("reset seen");
        assert!(data.writer.send(Bytes::from_static(b"late")).await.is_err());

        // A server-side (even) stream id from the client is refused.
        c.open(4, &[], false).await;
        assert!(matches!(c.next().await, Some(Got::Reset(4))));
        drop(c);
        assert!(
            streams.recv().await.is_none(),
            "the session ends with the connection"
        );
    }
}
