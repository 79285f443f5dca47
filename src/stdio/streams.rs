//! The process's standard input and output, as the transport reads and
//! writes them ([`standard_streams`]).
//!
//! tokio's `stdin()` and `stdout()` hand every read, write and flush to the
//! runtime's blocking pool: each message in or out wakes a thread of that
//! pool and waits for it to wake the task again. When a stream is a pipe or a
//! Unix socket, as when an MCP client starts engram (Python's `subprocess`
//! makes pipes, Node's `child_process` Unix sockets), it is read or written
//! through the runtime's reactor instead, in non-blocking mode, like any
//! socket. A terminal or a file keeps tokio's own.
//!
//! Invariants:
//! * non-blocking is a mode of an open file description, shared by every
//!   descriptor (and process) that holds it. Standard output is switched only
//!   when standard error is another file: with `2>&1` into a pipe the two are
//!   one description, the logs write to stderr in blocking mode, and a full
//!   pipe would turn their writes into errors;
//! * the streams are duplicates of descriptors 0 and 1, which stay open: a
//!   stream that cannot be switched is left as it was, and served by tokio's
//!   own reader or writer.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;

/// A reader and a writer for [`super::transport`].
pub type Streams = (
    Box<dyn AsyncRead + Send + Unpin>,
    Box<dyn AsyncWrite + Send + Unpin>,
);

/// What a standard stream is, as far as reading it goes.
enum Kind {
    Pipe,
    UnixSocket,
    Other,
}

/// Standard input and output: through the reactor where they are pipes or
/// Unix sockets, else tokio's own (module docs). Must run inside the runtime.
pub fn standard_streams() -> Streams {
    let input = or_else(reactor_input(), "stdin", || Box::new(tokio::io::stdin()));
    let output = or_else(reactor_output(), "stdout", || Box::new(tokio::io::stdout()));
    (input, output)
}

/// The reactor's stream if `picked` is one, else `tokio_own()`; a failure
/// to switch `name` is logged and served the same way.
fn or_else<T>(picked: io::Result<Option<T>>, name: &str, tokio_own: impl FnOnce() -> T) -> T {
    picked
        .unwrap_or_else(|e| {
            tracing::debug!(error = %e, stream = name, "served through the blocking pool");
            None
        })
        .unwrap_or_else(tokio_own)
}

/// Standard input through the reactor, if it is a pipe or a Unix socket.
fn reactor_input() -> io::Result<Option<Box<dyn AsyncRead + Send + Unpin>>> {
    let fd = io::stdin().as_fd().try_clone_to_owned()?;
    Ok(match kind(&fd)? {
        Kind::Pipe => Some(Box::new(pipe::Receiver::from_owned_fd(fd)?)),
        Kind::UnixSocket => Some(Box::new(unix_stream(fd)?)),
        Kind::Other => None,
    })
}

/// Standard output through the reactor, if it is a pipe or a Unix socket
/// that standard error does not share.
fn reactor_output() -> io::Result<Option<Box<dyn AsyncWrite + Send + Unpin>>> {
    let fd = io::stdout().as_fd().try_clone_to_owned()?;
    if same_file(&fd, &io::stderr().as_fd().try_clone_to_owned()?)? {
        return Ok(None);
    }
    Ok(match kind(&fd)? {
        Kind::Pipe => Some(Box::new(pipe::Sender::from_owned_fd(fd)?)),
        Kind::UnixSocket => Some(Box::new(unix_stream(fd)?)),
        Kind::Other => None,
    })
}

fn kind(fd: &OwnedFd) -> io::Result<Kind> {
    let file_type = File::from(fd.try_clone()?).metadata()?.file_type();
    Ok(if file_type.is_fifo() {
        Kind::Pipe
    } else if file_type.is_socket() && is_unix_socket(fd)? {
        Kind::UnixSocket
    } else {
        Kind::Other
    })
}

/// Whether socket `fd` is a Unix one (not TCP, say).
fn is_unix_socket(fd: &OwnedFd) -> io::Result<bool> {
    let socket = std::os::unix::net::UnixStream::from(fd.try_clone()?);
    Ok(socket.local_addr().is_ok())
}

fn unix_stream(fd: OwnedFd) -> io::Result<tokio::net::UnixStream> {
    let socket = std::os::unix::net::UnixStream::from(fd);
    socket.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(socket)
}

fn same_file(a: &OwnedFd, b: &OwnedFd) -> io::Result<bool> {
    let a = File::from(a.try_clone()?).metadata()?;
    let b = File::from(b.try_clone()?).metadata()?;
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}
