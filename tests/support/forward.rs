//! A plain TCP forwarder: a second port for a real service, byte for byte.
//!
//! A TLS registry reached through another port keeps its certificate but is a different
//! `host:port` to a Docker daemon, which looks its trust up per `host:port` under
//! `/etc/docker/certs.d/`: the way to show a registry that the worker trusts (through its
//! `ca_file`) and the daemon does not.

use std::net::SocketAddr;

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards every connection to its listening address on to `upstream`, until dropped.
#[derive(Debug)]
pub struct TcpForwarder {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TcpForwarder {
    /// Listens on `bind` (port 0 for any free port) and forwards to `upstream`.
    pub async fn start(bind: SocketAddr, upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// The forwarder's own address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TcpForwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
