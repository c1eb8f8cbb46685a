//! systemd readiness notification (`Type=notify`), without a dependency: one datagram to
//! `$NOTIFY_SOCKET`. Outside systemd the variable is unset and this does nothing.

use std::os::unix::net::UnixDatagram;

/// Send a notification such as `READY=1` or `STOPPING=1`; errors are logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = notify_to(&path, state) {
        tracing::warn!(error = %e, state, "could not notify systemd");
    }
}

/// One datagram to the socket at `path` (a leading `@` names an abstract socket).
fn notify_to(path: &std::ffi::OsStr, state: &str) -> std::io::Result<usize> {
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
        sock.send_to_addr(state.as_bytes(), &addr)
    } else {
        sock.send_to(state.as_bytes(), path)
    }
}

/// The watchdog interval systemd expects (`WatchdogSec=`), if the watchdog is on for this
/// process. The main loop should then call [`watchdog_ping`] every `interval / 2`, and only
/// from a place that proves progress (a wedged pipeline must stop pinging so systemd restarts
/// it). `None` outside systemd, without `WatchdogSec=`, or when the variables name another PID.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    watchdog_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// Tell systemd the service is alive (`WATCHDOG=1`).
pub fn watchdog_ping() {
    notify("WATCHDOG=1");
}

/// `sd_watchdog_enabled` rules: a positive `WATCHDOG_USEC`, and `WATCHDOG_PID`, when set,
/// equal to our PID (a child started by the service must not ping on its behalf).
fn watchdog_from(
    usec: Option<&str>,
    pid: Option<&str>,
    my_pid: u32,
) -> Option<std::time::Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        let pid: u32 = pid.trim().parse().ok()?;
        if pid != my_pid {
            return None;
        }
    }
    Some(std::time::Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn watchdog_interval_follows_sd_watchdog_enabled_rules() {
        assert_eq!(watchdog_from(None, None, 7), None);
        assert_eq!(
            watchdog_from(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_from(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_from(Some("soon"), None, 7), None);
        assert_eq!(watchdog_from(Some("30000000"), Some("x"), 7), None);
    }

    #[test]
    fn notify_sends_one_datagram_with_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "WATCHDOG=1").unwrap();
        let mut buf = [0u8; 64];
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
}
