//! Against a real redis-server: each test talks to it over TCP with plain RESP.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use redis_test_server::{RedisServer, RedisServerError, RedisServerOptions};

/// Sends one command (as RESP) on a fresh connection and returns the first
/// reply line, or the I/O error (e.g. a timeout while the server is paused).
fn send(port: u16, args: &[&str], timeout: Duration) -> std::io::Result<String> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(timeout))?;
    let mut writer = stream.try_clone()?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    writer.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

fn ping(port: u16) -> std::io::Result<String> {
    send(port, &["PING"], Duration::from_secs(2))
}

/// The `host:port` part of a `redis://` URL.
fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_started_server_answers_ping_at_its_url() {
    let server = RedisServer::start().unwrap();
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert_eq!(ping(port_of(&server.url())).unwrap(), "+PONG");
    assert!(server.pid().is_some_and(process_exists));
}

#[test]
fn two_servers_get_different_ports() {
    let a = RedisServer::start().unwrap();
    let b = RedisServer::start().unwrap();
    assert_ne!(a.port(), b.port());
}

#[test]
fn restart_keeps_the_port_and_loses_the_data() {
    let mut server = RedisServer::start().unwrap();
    let port = server.port();
    let old_pid = server.pid().unwrap();
    assert_eq!(
        send(port, &["SET", "k", "v"], Duration::from_secs(2)).unwrap(),
        "+OK"
    );
    assert_eq!(
        send(port, &["GET", "k"], Duration::from_secs(2)).unwrap(),
        "$1"
    );

    server.restart().unwrap();

    assert_eq!(server.port(), port);
    assert_ne!(server.pid().unwrap(), old_pid);
    assert!(!process_exists(old_pid), "the old process was not killed");
    assert_eq!(
        send(port, &["GET", "k"], Duration::from_secs(2)).unwrap(),
        "$-1"
    );
}

#[test]
fn stop_kills_and_restart_brings_it_back() {
    let mut server = RedisServer::start().unwrap();
    let pid = server.pid().unwrap();
    server.stop();
    assert_eq!(server.pid(), None);
    assert!(!process_exists(pid));
    assert!(ping(server.port()).is_err());
    assert!(matches!(server.pause(), Err(RedisServerError::NotRunning)));
    server.restart().unwrap();
    assert_eq!(ping(server.port()).unwrap(), "+PONG");
}

#[test]
fn a_paused_server_does_not_answer_until_resumed() {
    let server = RedisServer::start().unwrap();
    server.pause().unwrap();
    let started = Instant::now();
    let paused = send(server.port(), &["PING"], Duration::from_millis(300));
    assert!(paused.is_err(), "a paused server answered: {paused:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    server.resume().unwrap();
    assert_eq!(ping(server.port()).unwrap(), "+PONG");
}

#[test]
fn drop_kills_the_process_even_when_paused() {
    let server = RedisServer::start().unwrap();
    let pid = server.pid().unwrap();
    let port = server.port();
    server.pause().unwrap();
    drop(server);
    assert!(
        !process_exists(pid),
        "redis-server {pid} outlived its handle"
    );
    assert!(ping(port).is_err());
}

#[test]
fn a_password_is_required_and_in_the_url() {
    let server = RedisServer::start_with(RedisServerOptions {
        password: Some("pw-1".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        server.url(),
        format!("redis://:pw-1@127.0.0.1:{}", server.port())
    );
    assert!(ping(server.port()).unwrap().starts_with("-NOAUTH"));
}

#[test]
fn extra_args_reach_the_server() {
    let server = RedisServer::start_with(RedisServerOptions {
        extra_args: vec!["--databases".into(), "3".into()],
        ..Default::default()
    })
    .unwrap();
    let timeout = Duration::from_secs(2);
    assert_eq!(
        send(server.port(), &["SELECT", "2"], timeout).unwrap(),
        "+OK"
    );
    assert!(
        send(server.port(), &["SELECT", "3"], timeout)
            .unwrap()
            .starts_with("-ERR")
    );
}

#[test]
fn a_server_that_cannot_start_names_why() {
    let error = RedisServer::start_with(RedisServerOptions {
        extra_args: vec!["--no-such-option".into(), "1".into()],
        ..Default::default()
    })
    .err()
    .expect("redis-server accepted an unknown option");
    let RedisServerError::GaveUp { attempts, last } = &error else {
        panic!("unexpected error: {error}");
    };
    assert_eq!(*attempts, 5);
    assert!(matches!(**last, RedisServerError::Exited { .. }), "{last}");
}
