//! systemd's notification protocol (sd_notify), for units with `Type=notify` and `WatchdogSec=`:
//! the daemon says READY=1 once it serves, then WATCHDOG=1 regularly while a liveness check
//! passes, so systemd restarts a process that is wedged rather than dead. Outside systemd
//! (no NOTIFY_SOCKET) every call does nothing.

use std::future::Future;
use std::io;
use std::os::unix::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::warn;

/// Sends `state` (e.g. "READY=1") to the service manager; `Ok(false)` when not run by one.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(socket) => send(&socket.to_string_lossy(), state).map(|()| true),
        None => Ok(false),
    }
}

/// Sends one datagram to the notification socket at `path` ('@' starts an abstract name).
fn send(path: &str, state: &str) -> io::Result<()> {
    let address = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &address)?;
    Ok(())
}

/// The interval systemd expects pings at (half of `WatchdogSec`), when it watches this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    // WATCHDOG_PID, when set, names the process meant; a child that inherited it is not.
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Says READY=1, then, if systemd watches, pings it every interval while `alive` answers `true`
/// within that interval; a check that fails or hangs skips the ping, and systemd restarts the
/// process once `WatchdogSec` passes without one.
pub fn ready_and_watch<F, Fut>(alive: F) -> Option<JoinHandle<()>>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    if let Err(error) = notify("READY=1") {
        warn!(%error, "cannot notify systemd");
    }
    let interval = watchdog_interval()?;
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            match tokio::time::timeout(interval, alive()).await {
                Ok(true) => {
                    if let Err(error) = notify("WATCHDOG=1") {
                        warn!(%error, "cannot ping the systemd watchdog");
                    }
                }
                Ok(false) => warn!("liveness check failed; not pinging the systemd watchdog"),
                Err(_) => warn!(?interval, "liveness check hung; not pinging the systemd watchdog"),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_the_state_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buffer = [0u8; 64];
        let read = manager.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..read], b"READY=1");
    }

    #[test]
    fn sends_the_state_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("lbfleet-notify-test-{}", std::process::id());
        let manager = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        send(&format!("@{name}"), "WATCHDOG=1").unwrap();
        let mut buffer = [0u8; 64];
        let read = manager.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..read], b"WATCHDOG=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        assert!(send(dir.path().join("absent").to_str().unwrap(), "READY=1").is_err());
    }
}
