//! The syslog sink: each event is one RFC 5424 message whose MSG is the event's stored canonical
//! JSON, sent over TCP with octet-counting framing (RFC 6587 §3.4.1: `MSG-LEN SP SYSLOG-MSG`)
//! or over UDP, one message per datagram (RFC 5426).
//!
//! Written here rather than taken from a crate: the maintained syslog clients (`syslog`,
//! `fasyslog`) write through blocking std sockets, frame TCP with a trailing newline
//! (non-transparent framing) rather than octet counting, and stamp messages with the time of
//! sending; the format itself is one line of header (see [`format`]).
//!
//! The message: `<PRI>1 TIMESTAMP HOSTNAME custodia PROCID MSGID - MSG`, where PRI is facility
//! 13 (log audit, RFC 5424 §6.2.1) × 8 + severity 6 (informational) for an allowed event, 5
//! (notice) for a denied or failed one; TIMESTAMP is the event's own `time`; HOSTNAME the
//! machine's host name (or `-`); PROCID the server's process id; MSGID the event's action
//! (`customer.read`); no structured data (`-`: the event is all in MSG). MSG is ASCII for every
//! event Custodia writes today; one holding other characters is sent as UTF-8 with the BOM
//! RFC 5424 §6.4 asks for.
//!
//! Plain syslog has no acknowledgement. An event counts as delivered once written and the
//! connection is seen still open at the next step (a receiver that closed or reset it shows by
//! then, and everything since the last confirmed event is sent again on a new connection). A
//! receiver that vanishes without closing (a host gone, a network cut) is noticed only when TCP
//! gives up, and UDP datagrams can be lost silently (a refused port is noticed, through the ICMP
//! error on the connected socket): for a guaranteed copy use the file sink.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

use crate::audit::Outcome;

/// Facility 13, log audit (RFC 5424 §6.2.1, Table 1).
const FACILITY_LOG_AUDIT: u8 = 13;
/// Severity of an allowed event: informational.
const SEVERITY_ALLOWED: u8 = 6;
/// Severity of a denied or failed event: notice.
const SEVERITY_REFUSED: u8 = 5;
/// The APP-NAME of every message.
pub const APP_NAME: &str = "custodia";
/// The longest wait for a TCP connection to a receiver.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait for a batch to be taken by the receiver's socket.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The UTF-8 byte order mark that starts a UTF-8 MSG (RFC 5424 §6.4).
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// RFC 6587, octet counting.
    Tcp,
    /// RFC 5426.
    Udp,
}

/// A receiver: `tcp://host:port` or `udp://host:port` (an IPv6 address in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogTarget {
    /// TCP or UDP.
    pub transport: Transport,
    /// A host name or an IP address (without brackets).
    pub host: String,
    /// The port, 1–65535.
    pub port: u16,
}

impl FromStr for SyslogTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (transport, rest) = if let Some(rest) = text.strip_prefix("tcp://") {
            (Transport::Tcp, rest)
        } else if let Some(rest) = text.strip_prefix("udp://") {
            (Transport::Udp, rest)
        } else {
            return Err("must be tcp://host:port or udp://host:port (unknown scheme)".into());
        };
        let invalid = || "must be tcp://host:port or udp://host:port".to_owned();
        let (host, port) = rest.rsplit_once(':').ok_or_else(invalid)?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| "the port must be a number from 1 to 65535".to_owned())?;
        let host_ok = !host.is_empty()
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
        if !host_ok || port == 0 {
            return Err(invalid());
        }
        Ok(SyslogTarget { transport, host: host.to_owned(), port })
    }
}

impl fmt::Display for SyslogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.transport {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// A syslog receiver, connected when there is something to send.
#[derive(Debug)]
pub struct SyslogSink {
    target: SyslogTarget,
    connection: Option<Connection>,
    hostname: String,
    procid: String,
}

#[derive(Debug)]
enum Connection {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

impl SyslogSink {
    /// A sink for `target` (nothing is connected yet).
    pub fn new(target: SyslogTarget) -> Self {
        SyslogSink { target, connection: None, hostname: hostname(), procid: std::process::id().to_string() }
    }

    /// The receiver.
    pub fn target(&self) -> &SyslogTarget {
        &self.target
    }

    /// Sends `events` (seq, canonical JSON) in order, connecting first if need be.
    pub async fn deliver(&mut self, events: &[(u64, Vec<u8>)]) -> io::Result<()> {
        if self.connection.is_none() {
            self.connection = Some(self.connect().await?);
        }
        let mut messages = Vec::with_capacity(events.len());
        for (seq, bytes) in events {
            let message = format(bytes, &self.hostname, &self.procid).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("stored event {seq} unreadable: {e}"))
            })?;
            messages.push(message);
        }
        match self.connection.as_mut() {
            Some(Connection::Tcp(stream)) => {
                let mut frames = Vec::new();
                for message in &messages {
                    frames.extend_from_slice(format!("{} ", message.len()).as_bytes());
                    frames.extend_from_slice(message);
                }
                tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&frames))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the receiver takes no data"))?
            }
            Some(Connection::Udp(socket)) => {
                for message in &messages {
                    socket.send(message).await?;
                }
                Ok(())
            }
            None => Err(io::Error::other("not connected")),
        }
    }

    /// Fails if the receiver is known to have closed or refused the connection since the last
    /// delivery (then what was sent since the last confirmed event may not have arrived).
    pub fn settle(&mut self) -> io::Result<()> {
        let mut buffer = [0u8; 512];
        let closed =
            || io::Error::new(io::ErrorKind::ConnectionAborted, "the receiver closed the connection");
        match &self.connection {
            None => Ok(()),
            // A syslog receiver sends nothing: end of stream means it closed; bytes are ignored.
            Some(Connection::Tcp(stream)) => match stream.try_read(&mut buffer) {
                Ok(0) => Err(closed()),
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                Err(e) => Err(e),
            },
            // A connected UDP socket reports an ICMP "port unreachable" as a refused receive.
            Some(Connection::Udp(socket)) => match socket.try_recv(&mut buffer) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                Err(e) => Err(e),
            },
        }
    }

    /// Drops the connection after a failure.
    pub fn reset(&mut self) {
        self.connection = None;
    }

    async fn connect(&self) -> io::Result<Connection> {
        let mut addresses = tokio::net::lookup_host((self.target.host.as_str(), self.target.port)).await?;
        let address = addresses
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the host name has no address"))?;
        match self.target.transport {
            Transport::Tcp => {
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting timed out"))??;
                stream.set_nodelay(true)?;
                Ok(Connection::Tcp(stream))
            }
            Transport::Udp => {
                let local = if address.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                let socket = UdpSocket::bind(local).await?;
                socket.connect(address).await?;
                Ok(Connection::Udp(socket))
            }
        }
    }
}

/// The members of a stored event the message header is made of. Read loosely (unknown members
/// ignored): the header must never stop the stream.
#[derive(serde::Deserialize)]
struct Header {
    time: String,
    action: String,
    outcome: Outcome,
}

/// The RFC 5424 message of one stored event (its canonical JSON bytes), see the module docs.
/// Fails only when the bytes are not an event.
pub fn format(event_bytes: &[u8], hostname: &str, procid: &str) -> Result<Vec<u8>, serde_json::Error> {
    let header: Header = serde_json::from_slice(event_bytes)?;
    let severity = if header.outcome == Outcome::Allowed { SEVERITY_ALLOWED } else { SEVERITY_REFUSED };
    let priority = FACILITY_LOG_AUDIT * 8 + severity;
    // A header field is 1–N printable ASCII characters or the NILVALUE `-` (RFC 5424 §6).
    let field = |value: &str, max: usize| {
        let printable =
            !value.is_empty() && value.len() <= max && value.bytes().all(|b| (33..=126).contains(&b));
        if printable { value.to_owned() } else { "-".to_owned() }
    };
    let (time, msgid) = (field(&header.time, 64), field(&header.action, 32));
    let mut message = format!("<{priority}>1 {time} {hostname} {APP_NAME} {procid} {msgid} - ").into_bytes();
    if !event_bytes.is_ascii() {
        message.extend_from_slice(BOM);
    }
    message.extend_from_slice(event_bytes);
    Ok(message)
}

/// The machine's host name as RFC 5424 HOSTNAME allows it (1–255 printable ASCII characters),
/// else `-`.
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    let valid = !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| (33..=126).contains(&b));
    if valid { name.to_owned() } else { "-".to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print_back() {
        for text in ["tcp://127.0.0.1:6514", "udp://logs.example.com:514", "tcp://[::1]:601"] {
            let target: SyslogTarget = text.parse().unwrap();
            assert_eq!(target.to_string(), text);
        }
        let target: SyslogTarget = "tcp://[::1]:601".parse().unwrap();
        assert_eq!((target.transport, target.host.as_str(), target.port), (Transport::Tcp, "::1", 601));
        for bad in [
            "http://logs:514",
            "logs:514",
            "tcp://logs",
            "tcp://:514",
            "udp://logs:0",
            "tcp://logs:99999",
            "tcp://a b:1",
            "tcp://logs:514/x",
        ] {
            assert!(bad.parse::<SyslogTarget>().is_err(), "{bad}");
        }
        assert!("http://logs:514".parse::<SyslogTarget>().unwrap_err().contains("unknown scheme"));
    }

    #[test]
    fn a_message_is_rfc5424_with_the_event_as_msg() {
        let event = br#"{"action":"customer.read","actor":{"role":"merchant","sub":"shop"},"outcome":"denied","reason":["no_grant"],"request_id":"r1","seq":7,"time":"2026-11-22T22:49:46.794Z"}"#;
        let message = format(event, "vault-1", "42").unwrap();
        let expected = [
            b"<109>1 2026-11-22T22:49:46.794Z vault-1 custodia 42 customer.read - ".as_slice(),
            event.as_slice(),
        ]
        .concat();
        assert_eq!(message, expected);
        // UTF-8 beyond ASCII: the BOM first (RFC 5424 §6.4); a header field that is not
        // printable ASCII becomes the NILVALUE.
        let event = "{\"action\":\"custom action\",\"outcome\":\"allowed\",\"purpose\":\"caf\u{e9}\",\"seq\":8,\"time\":\"2026-11-22T22:49:47Z\"}";
        let message = format(event.as_bytes(), "-", "42").unwrap();
        let expected =
            [b"<110>1 2026-11-22T22:49:47Z - custodia 42 - - \xEF\xBB\xBF".as_slice(), event.as_bytes()]
                .concat();
        assert_eq!(message, expected);
    }
}
