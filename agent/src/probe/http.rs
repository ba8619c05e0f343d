//! One HTTP/1.1 request through this host's HAProxy with an FQDN as `Host`, and what the node
//! that answered says about itself (`X-Shard`, `X-Served-By`).

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The most bytes of an answer read: its head is all the probe needs.
const HEAD_LIMIT: usize = 16 * 1024;

/// Why a probe got no usable answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProbeError {
    #[error("refusing to send {0:?} as a Host header")]
    UnsafeHost(String),
    #[error("cannot connect to {address}: {message}")]
    Connect { address: String, message: String },
    #[error("I/O with {address}: {message}")]
    Io { address: String, message: String },
    #[error("no answer from {address} within {after:?}")]
    Timeout { address: String, after: Duration },
    #[error("not an HTTP answer: {0:?}")]
    Malformed(String),
}

/// The parts of an answer the probe looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// `X-Shard`, empty when absent.
    pub shard: String,
    /// `X-Served-By`, empty when absent.
    pub served_by: String,
}

/// Sends `GET /` with `Host: <fqdn>` to `address` on a fresh connection; `timeout` bounds it all.
pub async fn get(address: &str, fqdn: &str, timeout: Duration) -> Result<Answer, ProbeError> {
    // The FQDN comes from the coordinator's state; still, never let it add a header or a request.
    if fqdn.is_empty() || fqdn.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(ProbeError::UnsafeHost(fqdn.to_owned()));
    }
    let exchange = async {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|e| ProbeError::Connect { address: address.to_owned(), message: e.to_string() })?;
        let io = |e: std::io::Error| ProbeError::Io { address: address.to_owned(), message: e.to_string() };
        let request =
            format!("GET / HTTP/1.1\r\nHost: {fqdn}\r\nUser-Agent: lbfleet-agent-probe\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut head = Vec::with_capacity(1024);
        let mut buffer = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < HEAD_LIMIT {
            let read = stream.read(&mut buffer).await.map_err(io)?;
            if read == 0 {
                break;
            }
            head.extend_from_slice(&buffer[..read]);
        }
        parse_head(&head)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(ProbeError::Timeout { address: address.to_owned(), after: timeout }))
}

/// Reads the status and the two headers from an answer's head.
pub fn parse_head(raw: &[u8]) -> Result<Answer, ProbeError> {
    let text = String::from_utf8_lossy(raw);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let malformed = || ProbeError::Malformed(status_line.chars().take(80).collect());
    let mut words = status_line.split(' ');
    if !words.next().is_some_and(|version| version.starts_with("HTTP/1.")) {
        return Err(malformed());
    }
    let status = words.next().and_then(|code| code.parse::<u16>().ok()).ok_or_else(malformed)?;
    let mut answer = Answer { status, shard: String::new(), served_by: String::new() };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        if name.trim().eq_ignore_ascii_case("x-shard") {
            answer.shard = value.trim().to_owned();
        } else if name.trim().eq_ignore_ascii_case("x-served-by") {
            answer.served_by = value.trim().to_owned();
        }
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_shard_and_node() {
        let raw = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nx-served-by: web-1-node-0\r\nX-Shard:  web-1 \r\n\r\nserved by";
        let answer = parse_head(raw).unwrap();
        assert_eq!(answer, Answer { status: 200, shard: "web-1".into(), served_by: "web-1-node-0".into() });
        let bare = parse_head(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/html\r\n\r\n").unwrap();
        assert_eq!((bare.status, bare.shard.as_str()), (503, ""));
        assert_eq!(parse_head(b"SSH-2.0-OpenSSH\r\n"), Err(ProbeError::Malformed("SSH-2.0-OpenSSH".into())));
        assert!(parse_head(b"").is_err());
    }

    #[tokio::test]
    async fn a_host_with_a_line_break_is_never_sent() {
        let err = get("127.0.0.1:1", "a.com\r\nX: y", Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, ProbeError::UnsafeHost(_)), "{err}");
    }

    #[tokio::test]
    async fn a_silent_frontend_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        // Accepts and never answers.
        let _held = tokio::spawn(async move {
            let (_socket, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await
        });
        let err = get(&address, "a.com", Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, ProbeError::Timeout { .. }), "{err}");
    }
}
