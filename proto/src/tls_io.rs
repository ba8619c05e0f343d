//! TLS connections made with the current [`Credentials`]: the coordinator's accept loop and
//! the connector every gRPC channel dials through.
//!
//! tonic's own TLS takes one configuration for the life of a server or channel; these ask
//! [`Credentials`] on every handshake, which is what lets certificates be renewed in place.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::TlsConnector;
use tonic::codegen::http::Uri;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::Service;
use tracing::debug;

use crate::credentials::Credentials;
use crate::tls::SERVER_NAME;

/// A server-side TLS connection, as tonic's server takes it (peer certificates included).
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Connections accepted on `listener` once their TLS handshake, with the configuration current at
/// that moment, completed within `handshake_timeout`. Handshakes run concurrently, so a client that
/// stalls its handshake holds up no one; failed ones are logged and dropped. Accepting stops when the
/// returned stream is dropped.
pub fn accept(
    listener: TcpListener,
    credentials: Arc<Credentials>,
    handshake_timeout: Duration,
) -> ReceiverStream<Result<ServerStream, io::Error>> {
    let (accepted, incoming) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = accepted.closed() => return,
                result = listener.accept() => match result {
                    Ok(connection) => connection,
                    Err(error) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        debug!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let Some(config) = credentials.server_config() else {
                return;
            };
            let accepted = accepted.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, TlsAcceptor::from(config).accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = accepted.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}

/// Dials `host:port` from a channel's URI and completes a TLS handshake with the current client
/// configuration, checking the server's certificate against [`SERVER_NAME`]; each step is bounded
/// by `timeout` and a failure names the address.
#[derive(Clone)]
pub struct Connector {
    credentials: Arc<Credentials>,
    timeout: Duration,
}

impl Connector {
    /// A connector using `credentials` as they are at each connection.
    pub fn new(credentials: Arc<Credentials>, timeout: Duration) -> Connector {
        Connector { credentials, timeout }
    }
}

impl Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.credentials.client_config();
        let timeout = self.timeout;
        Box::pin(async move {
            let authority = uri
                .authority()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host:port in {uri}")))?;
            let address = authority.as_str().to_string();
            let port = authority.port_u16().unwrap_or(443);
            let failed =
                |what: &str, error: &dyn std::fmt::Display| io::Error::other(format!("{what} {address}: {error}"));
            // An IPv6 literal comes bracketed in a URI, and unbracketed to the resolver.
            let host = authority.host().trim_start_matches('[').trim_end_matches(']');
            let tcp = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
                .await
                .map_err(|_| failed("connecting to", &format!("no answer within {:.1}s", timeout.as_secs_f64())))?
                .map_err(|error| failed("connecting to", &error))?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(SERVER_NAME).expect("SERVER_NAME is a valid DNS name");
            let tls = tokio::time::timeout(timeout, TlsConnector::from(config).connect(name, tcp))
                .await
                .map_err(|_| failed("TLS handshake with", &format!("no answer within {:.1}s", timeout.as_secs_f64())))?
                .map_err(|error| failed("TLS handshake with", &error))?;
            Ok(TokioIo::new(tls))
        })
    }
}
