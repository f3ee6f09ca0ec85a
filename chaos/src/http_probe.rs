//! Just enough HTTP to ask a redtail instance for `/readyz` and `/metrics`,
//! so the suite needs no HTTP client stack.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET path` on `127.0.0.1:port`: `(status, body)`, or `None` when the
/// instance does not answer within two seconds.
pub async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        parse_response(&String::from_utf8_lossy(&response))
    })
    .await
    .ok()
    .flatten()
}

fn parse_response(response: &str) -> Option<(u16, String)> {
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    Some((status, body.unwrap_or_default()))
}

/// The sum over all label sets of a Prometheus metric in a `/metrics` body
/// (`None` when the metric is absent).
pub fn metric_sum(exposition: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_table() {
        let body = "# HELP x\nredtail_fenced_batches_total{shard=\"1\"} 2\n\
                    redtail_fenced_batches_total{shard=\"3\"} 1\n\
                    redtail_fenced_batches_totalx 9\nredtail_shard_leases_held 5\n";
        let cases = [
            ("redtail_fenced_batches_total", Some(3.0)),
            ("redtail_shard_leases_held", Some(5.0)),
            ("redtail_missing", None),
        ];
        for (name, expected) in cases {
            assert_eq!(metric_sum(body, name), expected, "{name}");
        }
    }

    #[test]
    fn responses_parse() {
        assert_eq!(
            parse_response("HTTP/1.1 503 Service Unavailable\r\nA: b\r\n\r\nno"),
            Some((503, "no".to_string()))
        );
        assert_eq!(parse_response(""), None);
    }
}
