//! A TCP proxy a test can switch between passing traffic, refusing it
//! (connections cut, new ones closed at once) and stalling it (connections
//! held open, nothing forwarded): a cache that is up, down or hanging, as
//! seen from one engram process, while the server itself stays up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass = 0,
    Refuse = 1,
    Stall = 2,
}

pub struct Proxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    /// Bumped on every switch; open connections end when it moves.
    epoch: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let (epoch, _) = watch::channel(0u64);
        let task = tokio::spawn({
            let mode = mode.clone();
            let epoch = epoch.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let current = mode.load(Ordering::SeqCst);
                    let ended = epoch.subscribe();
                    let upstream = upstream.clone();
                    tokio::spawn(serve(client, upstream, current, ended));
                }
            }
        });
        Self {
            port,
            mode,
            epoch,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Switches mode; every open connection is cut, so the next ones get it.
    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut client: TcpStream, upstream: String, mode: u8, mut ended: watch::Receiver<u64>) {
    match mode {
        m if m == Mode::Refuse as u8 => {
            let _ = client.shutdown().await;
        }
        m if m == Mode::Stall as u8 => {
            // Hold the connection, read nothing, answer nothing.
            let _ = ended.changed().await;
        }
        _ => {
            let Ok(mut server) = TcpStream::connect(upstream.trim_start_matches("redis://")).await
            else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = ended.changed() => {}
            }
        }
    }
}
