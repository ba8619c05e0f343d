//! A peer that accepts every TCP connection and never reads or answers, like a frozen
//! coordinator (SIGSTOP keeps its sockets open) or a network black hole.

use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Listens on a loopback port until dropped.
pub struct FrozenPeer {
    /// `127.0.0.1:PORT`.
    pub address: String,
    task: JoinHandle<()>,
}

impl FrozenPeer {
    /// Starts listening on a free loopback port.
    pub async fn start() -> anyhow::Result<FrozenPeer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let task = tokio::spawn(async move {
            // The accepted sockets stay open, unread, until the peer is dropped.
            let mut held: Vec<TcpStream> = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        Ok(FrozenPeer { address, task })
    }
}

impl Drop for FrozenPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
