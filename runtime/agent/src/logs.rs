//! Container log files in the CRI format that kubelet and containerd write
//! (`<RFC3339Nano timestamp> <stdout|stderr> <F|P> <text>` per line), and reading them back the
//! way `kubectl logs` asks: tail, timestamps, since, limitBytes and follow.
//!
//! Files live at `<data_dir>/pods/<ns>_<pod>_<uid>/<container>/<restartCount>.log`; the caller
//! picks the path (see [`container_log_path`]).

use bytes::Bytes;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch, Mutex};

/// The longest line written as one record; longer ones are split into partial (`P`) records,
/// as containerd does, so a reader never has to hold an unbounded line.
pub const MAX_LINE: usize = 16 * 1024;

/// How often a follower looks for new data when the file has not grown.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(200);

pub type LogStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Which output of the container a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// `<data_dir>/pods/<ns>_<pod>_<uid>/<container>/<restart_count>.log`.
pub fn container_log_path(
    data_dir: &Path,
    namespace: &str,
    pod: &str,
    uid: &str,
    container: &str,
    restart_count: u32,
) -> PathBuf {
    data_dir
        .join("pods")
        .join(format!("{namespace}_{pod}_{uid}"))
        .join(container)
        .join(format!("{restart_count}.log"))
}

/// One log file shared by a container's stdout and stderr; each record is written whole under
/// the lock, so lines from the two streams never interleave inside a line.
pub struct LogWriter {
    file: Mutex<tokio::fs::File>,
}

impl LogWriter {
    /// Opens (appending) or creates the file and its directory.
    pub async fn open(path: &Path) -> std::io::Result<LogWriter> {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        Ok(LogWriter {
            file: Mutex::new(file),
        })
    }

    /// Appends one record stamped with the current time.
    pub async fn write_record(
        &self,
        stream: Stream,
        partial: bool,
        text: &[u8],
    ) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(text.len() + 48);
        line.extend_from_slice(format_rfc3339_nano(now_nanos(), true).as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.as_str().as_bytes());
        line.extend_from_slice(if partial { b" P " } else { b" F " });
        line.extend_from_slice(text);
        line.push(b'\n');
        let mut f = self.file.lock().await;
        f.write_all(&line).await?;
        f.flush().await
    }
}

/// Copies a container output into the log until it ends: every line becomes a record, lines
/// longer than [`MAX_LINE`] become partial records, and trailing text without a newline is
/// kept as a partial record so the bytes read back are exactly the bytes written.
pub async fn copy_stream(
    reader: impl AsyncRead + Unpin,
    stream: Stream,
    writer: Arc<LogWriter>,
) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(MAX_LINE, reader);
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            if !pending.is_empty() {
                writer.write_record(stream, true, &pending).await?;
            }
            return Ok(());
        }
        let room = MAX_LINE - pending.len();
        match available.iter().position(|b| *b == b'\n') {
            Some(i) if i <= room => {
                pending.extend_from_slice(&available[..i]);
                reader.consume(i + 1);
                writer.write_record(stream, false, &pending).await?;
                pending.clear();
            }
            _ => {
                let take = available.len().min(room);
                pending.extend_from_slice(&available[..take]);
                reader.consume(take);
                if pending.len() >= MAX_LINE {
                    writer.write_record(stream, true, &pending).await?;
                    pending.clear();
                }
            }
        }
    }
}

/// What a reader shows; the same choices `kubectl logs` offers.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Only the last N records.
    pub tail_lines: Option<i64>,
    /// Prefix each line with its RFC3339Nano timestamp.
    pub timestamps: bool,
    /// Only records at or after this time (nanoseconds since the epoch).
    pub since_nanos: Option<i128>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<i64>,
    /// Keep reading as the file grows.
    pub follow: bool,
}

impl ReadOptions {
    /// The options of a log request; `sinceSeconds` counts back from now.
    pub fn from_request(req: &cairn_wire::tunnel::LogRequest) -> ReadOptions {
        let since_nanos = match (&req.since_time, req.since_seconds) {
            (Some(t), _) => parse_rfc3339_nanos(t),
            (None, Some(s)) => Some(now_nanos() - i128::from(s) * 1_000_000_000),
            (None, None) => None,
        };
        ReadOptions {
            tail_lines: req.tail_lines,
            timestamps: req.timestamps,
            since_nanos,
            limit_bytes: req.limit_bytes,
            follow: req.follow,
        }
    }
}

/// Streams the log at `path` as `kubectl logs` shows it. With `follow`, the stream stays open
/// and picks up what is appended until `done` turns true (the container exited) and the file
/// is drained; without it, the stream ends at the end of the file.
pub fn read(path: &Path, opts: &ReadOptions, done: watch::Receiver<bool>) -> LogStream {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(16);
    let path = path.to_owned();
    let opts = opts.clone();
    tokio::spawn(async move {
        if let Err(e) = pump(&path, &opts, done, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// One parsed record of a CRI log file.
#[derive(Debug, PartialEq, Eq)]
struct Record<'a> {
    timestamp: &'a str,
    partial: bool,
    text: &'a [u8],
}

fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let timestamp = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or_default();
    // Tags may carry more fields after ':'; the first one says full or partial.
    let partial = tag.split(|b| *b == b':').next() == Some(b"P");
    Some(Record {
        timestamp,
        partial,
        text,
    })
}

/// Turns one record into what the client sees.
fn render(rec: &Record<'_>, timestamps: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(rec.text.len() + 40);
    if timestamps {
        // kubelet re-formats the stored time as RFC3339Nano (trailing zeros dropped).
        match parse_rfc3339_nanos(rec.timestamp) {
            Some(n) => out.extend_from_slice(format_rfc3339_nano(n, false).as_bytes()),
            None => out.extend_from_slice(rec.timestamp.as_bytes()),
        }
        out.push(b' ');
    }
    out.extend_from_slice(rec.text);
    if !rec.partial {
        out.push(b'\n');
    }
    out
}

/// Where reading starts so only the last `n` records are shown.
fn tail_offset(file: &mut std::fs::File, n: i64) -> std::io::Result<u64> {
    let len = file.seek(SeekFrom::End(0))?;
    if n <= 0 {
        return Ok(len);
    }
    let mut newlines = 0i64;
    let mut pos = len;
    let mut buf = vec![0u8; 64 * 1024];
    // The file's last byte is normally the newline that ends the last record; it does not
    // start a record, so it is not counted.
    let mut skip_last = true;
    while pos > 0 {
        let chunk = (pos as usize).min(buf.len());
        pos -= chunk as u64;
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut buf[..chunk])?;
        for i in (0..chunk).rev() {
            if buf[i] != b'\n' {
                continue;
            }
            if skip_last && pos + i as u64 == len - 1 {
                continue;
            }
            newlines += 1;
            if newlines == n {
                return Ok(pos + i as u64 + 1);
            }
        }
        skip_last = false;
    }
    Ok(0)
}

async fn pump(
    path: &Path,
    opts: &ReadOptions,
    mut done: watch::Receiver<bool>,
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let start = match opts.tail_lines {
        Some(n) if n >= 0 => tail_offset(&mut file, n)?,
        _ => 0,
    };
    file.seek(SeekFrom::Start(start))?;
    let mut file = tokio::fs::File::from_std(file);
    let mut budget = opts.limit_bytes.filter(|l| *l > 0).map(|l| l as usize);
    let mut carry: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::io::AsyncReadExt::read(&mut file, &mut chunk).await?;
        if n > 0 {
            carry.extend_from_slice(&chunk[..n]);
            let out = take_complete_records(&mut carry, opts);
            if !out.is_empty() && !send_limited(tx, out, &mut budget).await {
                return Ok(());
            }
            continue;
        }
        if !opts.follow {
            return Ok(());
        }
        // Drained: stop once the container has exited and nothing more can come.
        if *done.borrow() {
            let n = tokio::io::AsyncReadExt::read(&mut file, &mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            carry.extend_from_slice(&chunk[..n]);
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            changed = done.changed() => {
                if changed.is_err() {
                    // The sender is gone: nobody will ever say the container exited, so
                    // treat it as exited and finish after draining.
                    let n = tokio::io::AsyncReadExt::read(&mut file, &mut chunk).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    carry.extend_from_slice(&chunk[..n]);
                }
            }
            _ = tx.closed() => return Ok(()),
        }
    }
}

/// Renders every complete line in `carry` (leaving an unfinished one there).
fn take_complete_records(carry: &mut Vec<u8>, opts: &ReadOptions) -> Vec<u8> {
    let Some(last_nl) = carry.iter().rposition(|b| *b == b'\n') else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in carry[..last_nl].split(|b| *b == b'\n') {
        let Some(rec) = parse_record(line) else {
            continue;
        };
        if let Some(since) = opts.since_nanos {
            if parse_rfc3339_nanos(rec.timestamp).is_some_and(|t| t < since) {
                continue;
            }
        }
        out.extend_from_slice(&render(&rec, opts.timestamps));
    }
    carry.drain(..=last_nl);
    out
}

/// Sends `out`, cut to what is left of the byte budget; false when the reader should stop.
async fn send_limited(
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
    mut out: Vec<u8>,
    budget: &mut Option<usize>,
) -> bool {
    let mut exhausted = false;
    if let Some(left) = budget.as_mut() {
        if out.len() >= *left {
            out.truncate(*left);
            exhausted = true;
        }
        *left -= out.len();
    }
    if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
        return false;
    }
    !exhausted
}

pub fn now_nanos() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SS.fffffffffZ`; `fixed` keeps all nine digits (what the file stores, so
/// records sort as text), otherwise trailing zeros are dropped as Go's RFC3339Nano does.
pub fn format_rfc3339_nano(nanos: i128, fixed: bool) -> String {
    let secs = nanos.div_euclid(1_000_000_000) as i64;
    let frac = nanos.rem_euclid(1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = cairn_wire::time::civil_from_days(days);
    let base = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        tod / 3600,
        (tod / 60) % 60,
        tod % 60
    );
    if fixed {
        return format!("{base}.{frac:09}Z");
    }
    if frac == 0 {
        return format!("{base}Z");
    }
    let digits = format!("{frac:09}");
    format!("{base}.{}Z", digits.trim_end_matches('0'))
}

pub use cairn_wire::time::parse_rfc3339_nanos;

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    async fn collect(mut s: LogStream) -> String {
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.expect("chunk"));
        }
        String::from_utf8(out).expect("utf8")
    }

    fn finished() -> watch::Receiver<bool> {
        watch::channel(true).1
    }

    const SAMPLE: &str = "2024-05-01T10:00:00.000000001Z stdout F one\n\
                          2024-05-01T10:00:01.500000000Z stderr F two\n\
                          2024-05-01T10:00:02.000000000Z stdout P thr\n\
                          2024-05-01T10:00:02.100000000Z stdout F ee\n\
                          2024-05-01T10:00:03.000000000Z stdout F four\n";

    fn sample_file() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("0.log");
        std::fs::write(&p, SAMPLE).expect("write");
        (dir, p)
    }

    #[test]
    fn times_round_trip() {
        let t = parse_rfc3339_nanos("2024-05-01T10:00:01.5Z").expect("parse");
        assert_eq!(format_rfc3339_nano(t, false), "2024-05-01T10:00:01.5Z");
        assert_eq!(
            format_rfc3339_nano(t, true),
            "2024-05-01T10:00:01.500000000Z"
        );
        assert_eq!(
            parse_rfc3339_nanos("2024-05-01T12:00:01.5+02:00"),
            Some(t),
            "offsets"
        );
        assert_eq!(
            format_rfc3339_nano(0, false),
            "1970-01-01T00:00:00Z",
            "epoch"
        );
        assert_eq!(parse_rfc3339_nanos("yesterday"), None);
    }

    #[tokio::test]
    async fn reads_all_partial_lines_joined() {
        let (_d, p) = sample_file();
        let out = collect(read(&p, &ReadOptions::default(), finished())).await;
        assert_eq!(out, "one\ntwo\nthree\nfour\n");
    }

    #[tokio::test]
    async fn tail_and_timestamps() {
        let (_d, p) = sample_file();
        let opts = ReadOptions {
            tail_lines: Some(1),
            timestamps: true,
            ..Default::default()
        };
        let out = collect(read(&p, &opts, finished())).await;
        assert_eq!(out, "2024-05-01T10:00:03Z four\n");
        let opts = ReadOptions {
            tail_lines: Some(0),
            ..Default::default()
        };
        assert_eq!(collect(read(&p, &opts, finished())).await, "");
        let opts = ReadOptions {
            tail_lines: Some(100),
            ..Default::default()
        };
        assert_eq!(
            collect(read(&p, &opts, finished())).await,
            "one\ntwo\nthree\nfour\n"
        );
    }

    #[tokio::test]
    async fn since_and_limit_bytes() {
        let (_d, p) = sample_file();
        let opts = ReadOptions {
            since_nanos: parse_rfc3339_nanos("2024-05-01T10:00:01Z"),
            ..Default::default()
        };
        assert_eq!(
            collect(read(&p, &opts, finished())).await,
            "two\nthree\nfour\n"
        );
        let opts = ReadOptions {
            limit_bytes: Some(6),
            ..Default::default()
        };
        assert_eq!(collect(read(&p, &opts, finished())).await, "one\ntw");
    }

    #[tokio::test]
    async fn missing_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = read(
            &dir.path().join("none.log"),
            &ReadOptions::default(),
            finished(),
        );
        let first = s.next().await.expect("an item");
        assert_eq!(
            first.expect_err("error").kind(),
            std::io::ErrorKind::NotFound
        );
    }

    #[tokio::test]
    async fn writer_and_follow_until_done() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = container_log_path(dir.path(), "default", "web", "u1", "c", 0);
        let writer = Arc::new(LogWriter::open(&p).await.expect("open"));
        let (done_tx, done_rx) = watch::channel(false);
        let opts = ReadOptions {
            follow: true,
            ..Default::default()
        };
        let (mut out_w, out_r) = tokio::io::duplex(64);
        let (mut err_w, err_r) = tokio::io::duplex(64);
        let c1 = tokio::spawn(copy_stream(out_r, Stream::Stdout, writer.clone()));
        let c2 = tokio::spawn(copy_stream(err_r, Stream::Stderr, writer.clone()));
        out_w.write_all(b"hello\n").await.expect("write");
        // Wait until the first record is in the file before the follower opens it.
        for _ in 0..100 {
            if std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0) > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let mut s = read(&p, &opts, done_rx);
        let first = s.next().await.expect("item").expect("bytes");
        assert_eq!(&first[..], b"hello\n");
        err_w.write_all(b"oops\n").await.expect("write");
        let second = s.next().await.expect("item").expect("bytes");
        assert_eq!(&second[..], b"oops\n");
        out_w.write_all(b"no newline").await.expect("write");
        drop(out_w);
        drop(err_w);
        c1.await.expect("join").expect("copy");
        c2.await.expect("join").expect("copy");
        done_tx.send(true).expect("done");
        assert_eq!(collect(s).await, "no newline");
        let text = std::fs::read_to_string(&p).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].ends_with(" stdout F hello"), "{}", lines[0]);
        assert!(lines[1].ends_with(" stderr F oops"), "{}", lines[1]);
        assert!(lines[2].ends_with(" stdout P no newline"), "{}", lines[2]);
        assert!(parse_rfc3339_nanos(lines[0].split(' ').next().unwrap_or("")).is_some());
    }

    #[tokio::test]
    async fn long_lines_are_split_into_partials() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("0.log");
        let writer = Arc::new(LogWriter::open(&p).await.expect("open"));
        let mut input = vec![b'x'; MAX_LINE * 2 + 10];
        input.push(b'\n');
        input.extend_from_slice(b"short\n");
        copy_stream(&input[..], Stream::Stdout, writer)
            .await
            .expect("copy");
        let text = std::fs::read_to_string(&p).expect("read");
        let tags: Vec<&str> = text
            .lines()
            .map(|l| l.split(' ').nth(2).unwrap_or(""))
            .collect();
        assert_eq!(tags, ["P", "P", "F", "F"]);
        let out = collect(read(&p, &ReadOptions::default(), finished())).await;
        assert_eq!(out.len(), MAX_LINE * 2 + 10 + 1 + 6);
        assert!(out.ends_with("x\nshort\n"));
    }
}
