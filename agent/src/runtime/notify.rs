//! The systemd notify protocol (`sd_notify(3)`): readiness, watchdog pings, reload and stop.
//!
//! Under `Type=notify` systemd passes a datagram socket in `NOTIFY_SOCKET`; the service sends
//! newline-separated `KEY=VALUE` assignments to it. This module reads `NOTIFY_SOCKET` **once**
//! (the first time any function here is called) and every function is a no-op returning `Ok`
//! when it is unset, so the agent behaves the same in a terminal, in tests and under systemd.
//!
//! Invariants and rules for callers:
//! - [`ready`] is sent once, only when the durable log is open, the templates are loaded and
//!   the sources are started (systemd counts the unit as started from then on).
//! - [`watchdog`] must be driven by the pipeline's own progress (a stuck pipeline must stop the
//!   pings so that systemd restarts it), never by a bare timer; ping at about half of
//!   [`watchdog_interval`].
//! - [`reloading`] is sent when a SIGHUP reload starts and is followed by [`ready`] when it is
//!   done; it carries `MONOTONIC_USEC`, which systemd 253 and later require with `RELOADING=1`.
//! - [`stopping`] is sent when a clean shutdown starts.
//! - A `STATUS=` text never contains a newline (it would start a new assignment): newlines are
//!   replaced by spaces.
//!
//! The datagram is written with std's `UnixDatagram` (path or Linux abstract `@name`
//! sockets); the `sd-notify` crate supplies the message formatting and the monotonic clock.
//! [`Notifier`] takes an explicit socket, which is how the tests use it without touching the
//! process environment.

use sd_notify::NotifyState;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// A notification could not be sent.
#[derive(Debug, thiserror::Error)]
#[error("cannot notify systemd at {socket}: {source}")]
pub struct NotifyError {
    /// The socket, as `NOTIFY_SOCKET` names it.
    pub socket: String,
    #[source]
    pub source: std::io::Error,
}

/// A sender to one notify socket, or to none (every send is then a no-op).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notifier {
    socket: Option<OsString>,
}

impl Notifier {
    /// The notifier for `NOTIFY_SOCKET` of this process (disabled when it is unset or empty).
    pub fn from_env() -> Notifier {
        Notifier::at(std::env::var_os("NOTIFY_SOCKET").unwrap_or_default())
    }

    /// A notifier for an explicit socket: a file-system path, or `@name` for a Linux abstract
    /// socket. An empty name disables it.
    pub fn at(socket: impl Into<OsString>) -> Notifier {
        let socket = socket.into();
        Notifier {
            socket: (!socket.is_empty()).then_some(socket),
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { socket: None }
    }

    /// Whether there is a socket to send to.
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// `READY=1`.
    pub fn ready(&self) -> Result<(), NotifyError> {
        self.send(&[NotifyState::Ready])
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.send(&[NotifyState::Watchdog])
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.send(&[NotifyState::Stopping])
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (the latter left out if the clock cannot be read).
    pub fn reloading(&self) -> Result<(), NotifyError> {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// `STATUS=<text>` (shown by `systemctl status`), newlines replaced by spaces.
    pub fn status(&self, text: &str) -> Result<(), NotifyError> {
        let one_line: String = text
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        self.send(&[NotifyState::Status(&one_line)])
    }

    /// Sends the assignments as one datagram, each followed by a newline.
    pub fn send(&self, states: &[NotifyState<'_>]) -> Result<(), NotifyError> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        let message = encode(states);
        send_datagram(socket, message.as_bytes()).map_err(|source| NotifyError {
            socket: socket.to_string_lossy().into_owned(),
            source,
        })
    }
}

/// The datagram for `states`: one `KEY=VALUE` line each.
fn encode(states: &[NotifyState<'_>]) -> String {
    states.iter().map(|s| format!("{s}\n")).collect()
}

/// Sends one datagram to a path socket or (`@name`) an abstract one.
fn send_datagram(socket: &OsStr, message: &[u8]) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let sent = match socket.as_bytes().split_first() {
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(message, &addr)?
        }
        _ => sock.send_to(message, PathBuf::from(socket))?,
    };
    if sent == message.len() {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "incomplete notify datagram",
        ))
    }
}

/// The process-wide notifier, from `NOTIFY_SOCKET` as it was at the first call.
fn global() -> &'static Notifier {
    static NOTIFIER: OnceLock<Notifier> = OnceLock::new();
    NOTIFIER.get_or_init(Notifier::from_env)
}

/// `READY=1`: the log is open, templates are loaded, sources are started.
pub fn ready() -> Result<(), NotifyError> {
    global().ready()
}

/// `WATCHDOG=1`: the pipeline made progress since the last ping.
pub fn watchdog() -> Result<(), NotifyError> {
    global().watchdog()
}

/// `STOPPING=1`: a clean shutdown has started.
pub fn stopping() -> Result<(), NotifyError> {
    global().stopping()
}

/// `RELOADING=1` + `MONOTONIC_USEC=`: a reload has started (send [`ready`] when it is done).
pub fn reloading() -> Result<(), NotifyError> {
    global().reloading()
}

/// `STATUS=<text>`: a one-line human status for `systemctl status`.
pub fn status(text: &str) -> Result<(), NotifyError> {
    global().status(text)
}

/// The watchdog interval systemd expects pings within (`WATCHDOG_USEC`), if the watchdog is
/// on and meant for this process (`WATCHDOG_PID` unset or equal to our pid). Ping at half of it.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_interval`] on explicit values: `None` when `usec` is missing, not a number or 0,
/// or when `pid` is set and is not `own_pid` (the variables were inherited from a parent).
fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    /// A bound datagram socket in a fresh temp dir, standing in for systemd's.
    struct FakeSystemd {
        dir: PathBuf,
        sock: UnixDatagram,
    }

    impl FakeSystemd {
        fn new(tag: &str) -> FakeSystemd {
            let dir = std::env::temp_dir().join(format!(
                "iomt-notify-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::remove_dir_all(&dir).ok();
            std::fs::create_dir_all(&dir).expect("temp dir");
            let sock = UnixDatagram::bind(dir.join("notify.sock")).expect("bind");
            sock.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            FakeSystemd { dir, sock }
        }

        fn notifier(&self) -> Notifier {
            Notifier::at(self.dir.join("notify.sock"))
        }

        fn recv(&self) -> String {
            let mut buf = [0u8; 4096];
            let n = self.sock.recv(&mut buf).expect("a datagram");
            String::from_utf8(buf[..n].to_vec()).expect("utf-8")
        }
    }

    impl Drop for FakeSystemd {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }

    #[test]
    fn sends_the_protocol_lines_in_order() {
        let sd = FakeSystemd::new("order");
        let n = sd.notifier();
        assert!(n.is_enabled());
        n.ready().expect("ready");
        n.status("buffer: 0 pending").expect("status");
        n.watchdog().expect("watchdog");
        n.stopping().expect("stopping");
        assert_eq!(sd.recv(), "READY=1\n");
        assert_eq!(sd.recv(), "STATUS=buffer: 0 pending\n");
        assert_eq!(sd.recv(), "WATCHDOG=1\n");
        assert_eq!(sd.recv(), "STOPPING=1\n");
    }

    #[test]
    fn reloading_carries_a_monotonic_timestamp() {
        let sd = FakeSystemd::new("reload");
        sd.notifier().reloading().expect("reloading");
        let msg = sd.recv();
        let mut lines = msg.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(usec.is_some_and(|u| u > 0), "got {msg:?}");
        assert_eq!(lines.next(), None);
        assert!(msg.ends_with('\n'));
    }

    #[test]
    fn status_cannot_inject_a_second_assignment() {
        let sd = FakeSystemd::new("inject");
        sd.notifier()
            .status("disk full\nREADY=1\r\nx")
            .expect("status");
        let msg = sd.recv();
        assert_eq!(msg, "STATUS=disk full READY=1  x\n");
        assert_eq!(msg.lines().count(), 1);
    }

    #[test]
    fn abstract_socket_names_are_supported() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("iomt-notify-test-{}", std::process::id());
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        Notifier::at(format!("@{name}")).ready().expect("ready");
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).expect("a datagram");
        assert_eq!(&buf[..n], b"READY=1\n");
    }

    #[test]
    fn disabled_notifier_sends_nothing_and_succeeds() {
        let n = Notifier::at("");
        assert!(!n.is_enabled());
        assert_eq!(n, Notifier::disabled());
        n.ready().expect("no-op");
        n.watchdog().expect("no-op");
        n.reloading().expect("no-op");
        n.status("x").expect("no-op");
        n.stopping().expect("no-op");
    }

    #[test]
    fn a_missing_socket_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("iomt-notify-none-{}", std::process::id()));
        let path = dir.join("absent.sock");
        let err = Notifier::at(&path).ready().expect_err("no listener");
        assert!(err.to_string().contains("absent.sock"), "{err}");
    }

    #[test]
    fn watchdog_interval_parsing() {
        let me = 4242;
        assert_eq!(
            watchdog_interval_from(Some("30000000"), None, me),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval_from(Some("200000"), Some("4242"), me),
            Some(Duration::from_millis(200))
        );
        assert_eq!(watchdog_interval_from(Some("200000"), Some("1"), me), None);
        assert_eq!(watchdog_interval_from(Some("200000"), Some("x"), me), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, me), None);
        assert_eq!(watchdog_interval_from(Some("soon"), None, me), None);
        assert_eq!(watchdog_interval_from(None, Some("4242"), me), None);
    }
}
