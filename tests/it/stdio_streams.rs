//! How `engram serve` reads and writes its standard streams: pipes and Unix
//! sockets through the reactor (non-blocking), anything else (a file, a
//! stdout that stderr shares) as before, and the protocol served either way.
//!
//! Whether a descriptor is non-blocking is read from `/proc/<pid>/fdinfo`.

use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::common::stdio::RawStdio;
use crate::common::{ENGRAM, HERMETIC};

const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// The handshake and a ping, one line each.
fn opening_lines() -> String {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "streams", "version": "1"}}});
    format!(
        "{init}\n{}\n{}\n",
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#
    )
}

/// `engram serve` on a fresh SQLite store in `dir`, on the given streams.
fn serve(dir: &tempfile::TempDir, stdin: Stdio, stdout: Stdio, stderr: Stdio) -> Child {
    Command::new(ENGRAM)
        .arg("serve")
        .envs(HERMETIC)
        .env(
            "ENGRAM_DATABASE_URL",
            format!("sqlite://{}/e.db", dir.path().display()),
        )
        .env("ENGRAM_LOG", "info")
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn engram")
}

/// Reads lines from `from` until the answers to the initialize (id 1) and
/// the ping (id 2) have come; returns them and every other line seen.
async fn answers(from: impl AsyncRead + Unpin) -> (Value, Value, Vec<String>) {
    let mut lines = BufReader::new(from).lines();
    let (mut init, mut ping, mut others) = (None, None, Vec::new());
    while init.is_none() || ping.is_none() {
        let line = tokio::time::timeout(ANSWER_WITHIN, lines.next_line())
            .await
            .expect("engram answered in time")
            .expect("reading engram's output")
            .expect("engram's output still open");
        match serde_json::from_str::<Value>(&line) {
            Ok(v) if v["id"] == 1 => init = Some(v),
            Ok(v) if v["id"] == 2 => ping = Some(v),
            _ => others.push(line),
        }
    }
    (init.unwrap(), ping.unwrap(), others)
}

fn assert_served(init: &Value, ping: &Value) {
    assert_eq!(init["result"]["serverInfo"]["name"], "engram", "{init}");
    assert!(ping.get("result").is_some(), "{ping}");
}

/// Whether descriptor `fd` of process `pid` is in non-blocking mode.
fn nonblocking(pid: u32, fd: u32) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).expect("fdinfo");
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|f| u32::from_str_radix(f.trim(), 8).expect("octal flags"))
        .expect("a flags line");
    flags & O_NONBLOCK != 0
}

/// Linux's `O_NONBLOCK`, as fdinfo prints the flags.
const O_NONBLOCK: u32 = 0o4000;

#[tokio::test]
async fn pipes_are_served_through_the_reactor() {
    let mut raw = RawStdio::start("info", &[], Stdio::null());
    let init = raw.exchange(opening_lines().lines().next().unwrap()).await;
    assert_eq!(init["result"]["serverInfo"]["name"], "engram", "{init}");
    let pid = raw.child.id().expect("engram runs");
    assert!(
        nonblocking(pid, 0),
        "stdin, a pipe, is read without blocking"
    );
    assert!(
        nonblocking(pid, 1),
        "stdout, a pipe, is written without blocking"
    );
}

#[tokio::test]
async fn a_unix_socket_is_served_through_the_reactor() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let theirs_too = theirs.try_clone().unwrap();
    let child = serve(
        &dir,
        Stdio::from(OwnedFd::from(theirs)),
        Stdio::from(OwnedFd::from(theirs_too)),
        Stdio::null(),
    );
    ours.set_nonblocking(true).unwrap();
    let (read, mut write) = tokio::net::UnixStream::from_std(ours).unwrap().into_split();
    write.write_all(opening_lines().as_bytes()).await.unwrap();
    let (init, ping, others) = answers(read).await;
    assert_served(&init, &ping);
    assert!(others.is_empty(), "only protocol on the socket: {others:?}");
    let pid = child.id().expect("engram runs");
    assert!(nonblocking(pid, 0), "the socket is served without blocking");
}

#[tokio::test]
async fn a_stdout_that_stderr_shares_stays_blocking_and_carries_both() {
    let dir = tempfile::tempdir().unwrap();
    // `engram serve 2>&1 | reader`: one pipe, one open description.
    let (reader, writer) = std::io::pipe().unwrap();
    let writer_too = writer.try_clone().unwrap();
    let mut child = serve(
        &dir,
        Stdio::piped(),
        Stdio::from(OwnedFd::from(writer)),
        Stdio::from(OwnedFd::from(writer_too)),
    );
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(opening_lines().as_bytes()).await.unwrap();
    let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader)).unwrap();
    let (init, ping, logs) = answers(reader).await;
    assert_served(&init, &ping);
    assert!(
        logs.iter()
            .any(|l| l.contains("engram serving MCP on stdio")),
        "the logs come through the same pipe: {logs:?}"
    );
    let pid = child.id().expect("engram runs");
    assert!(
        !nonblocking(pid, 1),
        "stdout shared with stderr must stay blocking: the logs write there"
    );
}

#[tokio::test]
async fn a_file_on_stdin_is_read_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let requests = dir.path().join("requests.jsonl");
    std::fs::write(&requests, opening_lines()).unwrap();
    let mut child = serve(
        &dir,
        Stdio::from(std::fs::File::open(&requests).unwrap()),
        Stdio::piped(),
        Stdio::null(),
    );
    let stdout = child.stdout.take().unwrap();
    let (init, ping, _) = answers(stdout).await;
    assert_served(&init, &ping);
    // The end of the file is the end of the session.
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("engram exits at the end of its input")
        .unwrap();
    assert!(status.success(), "{status}");
}
