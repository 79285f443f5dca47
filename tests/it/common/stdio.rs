//! The binary over stdio spoken to in raw JSON-RPC lines, as a client with
//! no SDK would: for tests of what goes over the pipe itself.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long a test waits for a line from engram.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// `engram serve` on a fresh SQLite store, its stdin and stdout held.
pub struct RawStdio {
    _dir: tempfile::TempDir,
    pub child: Child,
    pub stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl RawStdio {
    /// Starts engram logging at `log` (to `stderr`), with `env` set too.
    pub fn start(log: &str, env: &[(&str, &str)], stderr: std::process::Stdio) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(super::ENGRAM)
            .arg("serve")
            .envs(super::HERMETIC)
            .env(
                "ENGRAM_DATABASE_URL",
                format!("sqlite://{}/e.db", dir.path().display()),
            )
            .env("ENGRAM_LOG", log)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn engram");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            _dir: dir,
            child,
            stdin,
            stdout,
        }
    }

    /// Sends `line` as it is, then a newline.
    pub async fn send(&mut self, line: &str) {
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.write_all(b"\n").await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The next stdout line, which must be a JSON-RPC message.
    pub async fn recv(&mut self) -> Value {
        let line = tokio::time::timeout(ANSWER_WITHIN, self.stdout.next_line())
            .await
            .expect("engram answered in time")
            .unwrap()
            .expect("stdout still open");
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("stdout carried a non-JSON line ({e}): {line}"));
        assert_eq!(value["jsonrpc"], "2.0", "{line}");
        value
    }

    /// Sends `line` and reads the next message.
    pub async fn exchange(&mut self, line: &str) -> Value {
        self.send(line).await;
        self.recv().await
    }
}
