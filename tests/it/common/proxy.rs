//! A TCP proxy a test can switch between passing traffic, refusing it
//! (connections cut, new ones closed at once), stalling it (connections
//! cut, new ones held open with nothing forwarded) and freezing it (open
//! connections kept but nothing forwarded either way, as a partition looks
//! to a connection in the middle of a statement): a cache or database that
//! is up, down or hanging, as seen from one engram process, while the
//! server itself stays up.

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
    Freeze = 3,
}

pub struct Proxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    /// Bumped on every switch but to `Freeze`; open connections end when it moves.
    epoch: watch::Sender<u64>,
    /// True while frozen: open connections stop forwarding.
    frozen: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let (epoch, _) = watch::channel(0u64);
        let (frozen, _) = watch::channel(false);
        let task = tokio::spawn({
            let mode = mode.clone();
            let epoch = epoch.clone();
            let frozen = frozen.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let current = mode.load(Ordering::SeqCst);
                    let signals = (epoch.subscribe(), frozen.subscribe());
                    let upstream = upstream.clone();
                    tokio::spawn(serve(client, upstream, current, signals));
                }
            }
        });
        Self {
            port,
            mode,
            epoch,
            frozen,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Switches mode. To `Freeze`: open connections stay open and go
    /// silent. To any other: every open connection is cut, so the next
    /// ones get the new mode.
    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        self.frozen.send_replace(mode == Mode::Freeze);
        if mode != Mode::Freeze {
            self.epoch.send_modify(|e| *e += 1);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: String,
    mode: u8,
    (mut ended, mut frozen): (watch::Receiver<u64>, watch::Receiver<bool>),
) {
    match mode {
        m if m == Mode::Refuse as u8 => {
            let _ = client.shutdown().await;
        }
        m if m == Mode::Stall as u8 || m == Mode::Freeze as u8 => {
            // Hold the connection, read nothing, answer nothing.
            let _ = ended.changed().await;
        }
        _ => {
            let Ok(mut server) = TcpStream::connect(upstream.trim_start_matches("redis://")).await
            else {
                return;
            };
            let freeze = async { frozen.wait_for(|f| *f).await.is_ok() };
            let froze = tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                _ = ended.changed() => false,
                froze = freeze => froze,
            };
            if froze {
                // Both sockets held open, nothing forwarded, until cut.
                let _ = ended.changed().await;
            }
        }
    }
}
