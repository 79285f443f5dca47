//! The stdio transport: newline-delimited JSON-RPC on stdin/stdout.
//!
//! rmcp's own stdio transport ignores lines that are not JSON. We answer them
//! instead, as JSON-RPC 2.0 asks: a client that sent garbage learns so rather
//! than waiting forever. A line too long is a `-32700 Parse error`; anything
//! else wrong is answered as on every transport ([`crate::jsonrpc`]).
//!
//! To avoid an error storm with a peer that echoes our replies back as more
//! garbage, at most [`MAX_ERROR_REPLIES_PER_SEC`] such replies go out per second.
//! Both directions share one writer, so replies never interleave mid-line,
//! and each line goes out in one write.
//!
//! [`standard_streams`] picks how standard input and output are read and
//! written (`streams`).

mod streams;

pub use streams::standard_streams;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Sink, Stream};
use rmcp::RoleServer;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use serde_json::Value;

use crate::jsonrpc::{self, PARSE_ERROR, Refusal, Verdict};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

/// Longest accepted line: far above any legal request (text is capped well below).
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;
pub const MAX_ERROR_REPLIES_PER_SEC: u32 = 20;

type SharedWriter<W> = Arc<Mutex<W>>;

/// The (sink, stream) pair rmcp serves on; see the module docs.
pub fn transport<R, W>(
    reader: R,
    writer: W,
) -> (
    impl Sink<TxJsonRpcMessage<RoleServer>, Error = std::io::Error> + Send + Unpin + 'static,
    impl Stream<Item = RxJsonRpcMessage<RoleServer>> + Send + Unpin + 'static,
)
where
    R: tokio::io::AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let writer: SharedWriter<W> = Arc::new(Mutex::new(writer));
    let sink = futures::sink::unfold(
        writer.clone(),
        |writer, msg: TxJsonRpcMessage<RoleServer>| async move {
            let mut line = serde_json::to_vec(&msg).map_err(std::io::Error::other)?;
            line.push(b'\n');
            write_line(&writer, &line).await?;
            Ok::<_, std::io::Error>(writer)
        },
    );
    let state = Reader {
        input: BufReader::new(reader),
        writer,
        limiter: Limiter::default(),
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        let msg = state.next_message().await?;
        Some((msg, state))
    });
    (Box::pin(sink), Box::pin(stream))
}

struct Reader<R, W> {
    input: BufReader<R>,
    writer: SharedWriter<W>,
    limiter: Limiter,
}

impl<R, W> Reader<R, W>
where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// The next well-formed message; answers malformed lines on the way.
    /// `None` at end of input or on a read error.
    async fn next_message(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        let mut line = Vec::new();
        loop {
            line.clear();
            let complete = match read_line(&mut self.input, &mut line, MAX_LINE_BYTES).await {
                Ok(Some(complete)) => complete,
                Ok(None) => return None,
                Err(e) => {
                    tracing::error!(error = %e, "reading stdin failed");
                    return None;
                }
            };
            if !complete {
                self.reply(Refusal {
                    id: Value::Null,
                    code: PARSE_ERROR,
                    message: format!("Parse error: message longer than {MAX_LINE_BYTES} bytes"),
                })
                .await;
                continue;
            }
            let text = trim_line(&line);
            if text.is_empty() {
                continue;
            }
            match jsonrpc::read(text) {
                Verdict::Serve(msg) => return Some(*msg),
                Verdict::Refuse(refusal) => {
                    tracing::debug!(code = refusal.code, "answering a malformed line on stdin");
                    self.reply(refusal).await;
                }
                Verdict::Drop => {}
            }
        }
    }

    async fn reply(&mut self, refusal: Refusal) {
        if !self.limiter.allow() {
            tracing::warn!(
                code = refusal.code,
                "dropping an error reply: too many malformed messages"
            );
            return;
        }
        let mut line = refusal.to_json().to_string().into_bytes();
        line.push(b'\n');
        if let Err(e) = write_line(&self.writer, &line).await {
            tracing::error!(error = %e, "writing an error reply failed");
        }
    }
}

/// Reads one `\n`-terminated line into `out`, keeping at most `max` bytes.
/// `Ok(None)` at end of input; `Ok(Some(false))` when the line was too long
/// (its excess is consumed and dropped).
async fn read_line<R: AsyncBufRead + Unpin>(
    input: &mut R,
    out: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    let mut overflow = false;
    let mut read_any = false;
    loop {
        let buf = input.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if read_any { Some(!overflow) } else { None });
        }
        read_any = true;
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let used = chunk.len();
        if !overflow && out.len() + used <= max {
            out.extend_from_slice(chunk);
        } else {
            overflow = true;
            out.clear();
        }
        input.consume(used);
        if done {
            return Ok(Some(!overflow));
        }
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    line.trim_ascii()
}

/// Writes `line`, which ends with its newline, and flushes it.
async fn write_line<W: AsyncWrite + Unpin>(
    writer: &SharedWriter<W>,
    line: &[u8],
) -> std::io::Result<()> {
    let mut w = writer.lock().await;
    w.write_all(line).await?;
    w.flush().await
}

/// A fixed one-second window counter.
struct Limiter {
    window: Instant,
    used: u32,
}

impl Default for Limiter {
    fn default() -> Self {
        Self {
            window: Instant::now(),
            used: 0,
        }
    }
}

impl Limiter {
    fn allow(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.used = 0;
        }
        self.used += 1;
        self.used <= MAX_ERROR_REPLIES_PER_SEC
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::io::AsyncReadExt;

    async fn run(input: &str) -> (usize, Vec<Value>) {
        let (mut client, server_out) = tokio::io::duplex(1 << 16);
        let (_sink, stream) =
            transport(std::io::Cursor::new(input.as_bytes().to_vec()), server_out);
        let passed = stream.count().await;
        drop(_sink);
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        let replies = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (passed, replies)
    }

    #[tokio::test]
    async fn garbage_gets_answers_and_good_messages_pass() {
        let input = concat!(
            "not json\n",
            "{\"jsonrpc\":\"2.0\",\"id\":\"s1\"}\n",
            "[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]\n",
            "{\"jsonrpc\":\"2.0\",\"method\":7}\n",
            "\n",
            "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\"}\r\n",
        );
        let (passed, replies) = run(input).await;
        assert_eq!(passed, 1, "only the ping passes");
        assert_eq!(replies.len(), 3, "{replies:?}");
        assert_eq!(replies[0]["error"]["code"], -32700);
        assert_eq!(replies[0]["id"], Value::Null);
        assert_eq!(replies[1]["error"]["code"], -32600);
        assert_eq!(replies[1]["id"], "s1");
        assert!(
            replies[2]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("batches")
        );
    }

    #[tokio::test]
    async fn oversized_lines_are_refused_and_reading_goes_on() {
        let mut input = "x".repeat(MAX_LINE_BYTES + 10);
        input.push('\n');
        input.push_str("{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\"}\n");
        let (passed, replies) = run(&input).await;
        assert_eq!(passed, 1);
        assert_eq!(replies.len(), 1);
        assert!(
            replies[0]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("longer than")
        );
    }
}
