//! Is the server answering? A `PING` over a fresh TCP connection, with a
//! short timeout, speaking just enough RESP to authenticate first.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long one probe may take: short, because the caller loops until its
/// own deadline and a paused or half-started server must not stall it.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether `127.0.0.1:port` answers `PING` with `PONG`, after `AUTH` when a
/// password is set (with `requirepass`, an unauthenticated `PING` is refused).
pub(crate) fn answers_ping(port: u16, password: Option<&str>) -> bool {
    exchange(port, password).is_some()
}

/// The probe itself; `None` at the first step that fails or answers wrongly.
fn exchange(port: u16, password: Option<&str>) -> Option<()> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&address, PROBE_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT)).ok()?;
    let mut writer = stream.try_clone().ok()?;
    let mut reader = BufReader::new(stream);
    if let Some(password) = password {
        writer.write_all(&command(&["AUTH", password])).ok()?;
        (reply(&mut reader)? == "+OK").then_some(())?;
    }
    writer.write_all(&command(&["PING"])).ok()?;
    (reply(&mut reader)? == "+PONG").then_some(())
}

/// One command as a RESP array of bulk strings.
fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}

/// One reply line without its CRLF; `None` on timeout or a closed connection.
fn reply(reader: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end_matches("\r\n").to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_resp_arrays_of_bulk_strings() {
        let cases: [(&[&str], &str); 2] = [
            (&["PING"], "*1\r\n$4\r\nPING\r\n"),
            (&["AUTH", "pw"], "*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n"),
        ];
        for (args, expected) in cases {
            assert_eq!(
                String::from_utf8(command(args)).unwrap(),
                expected,
                "{args:?}"
            );
        }
    }

    #[test]
    fn replies_lose_their_crlf_and_end_at_eof() {
        let mut input: &[u8] = b"+OK\r\n+PONG\r\n";
        assert_eq!(reply(&mut input).as_deref(), Some("+OK"));
        assert_eq!(reply(&mut input).as_deref(), Some("+PONG"));
        assert_eq!(reply(&mut input), None);
    }
}
