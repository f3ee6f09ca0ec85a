//! The status page (`/status/page`) in a real browser: a cluster is seeded in
//! a real `redis-server` through the `cluster` crate's API, the real router
//! serves the page and `/status`, and headless Chromium loads the page, runs
//! its script against `/status`, and hands back the rendered DOM (and a
//! screenshot). So what is checked is what an operator would see, not the
//! HTML as sent.
//!
//! Chromium is installed by `scripts/setup.sh`; without it these tests fail
//! (a silently skipped browser test would hide a broken page).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::cluster::{
    ClusterKeys, MemberId, Membership, ShardId, ShardLease, ShardMap, initialize_checkpoint,
};
use anyhow::{Context, Result, bail, ensure};
use axum::extract::Request;
use axum::middleware::{self, Next};
use redtail::http;
use redtail::status::StatusSource;
use tokio_util::sync::CancellationToken;

use crate::support::redis_server::RedisServer;
use crate::support::status_server::{serve_status, status_state};

const PREFIX: &str = "sp::";
const SHARDS: u16 = 8;
const UNLED: u16 = 3;
const TTL: Duration = Duration::from_secs(60);
/// Longest a Chromium run may take before it is killed and the test fails.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(30);
/// Chromium instances are heavy on a small machine: one at a time.
static BROWSER: Mutex<()> = Mutex::new(());

/// The seeded members.
struct Seeded {
    a: MemberId,
    b: MemberId,
}

/// Which member leads which shard: `a` the even ones, `b` the odd ones,
/// nobody shard [`UNLED`].
fn planned_leader(shard: u16, seeded: &Seeded) -> Option<&MemberId> {
    match shard {
        UNLED => None,
        s if s % 2 == 0 => Some(&seeded.a),
        _ => Some(&seeded.b),
    }
}

/// Two live members, every shard but [`UNLED`] led, shard 1's checkpoint
/// 30 s old and shard 2's 600 s old; all through the cluster API.
async fn seed(redis: &RedisServer) -> Result<Seeded> {
    let client = redis::Client::open(redis.url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys = ClusterKeys::new(PREFIX)?;
    ShardMap::agree(&mut conn, &keys, SHARDS).await?;
    let seeded = Seeded {
        a: MemberId::generate("alpha"),
        b: MemberId::generate("beta"),
    };
    for member in [&seeded.a, &seeded.b] {
        Membership::new(keys.clone(), member.clone(), TTL)
            .join(&mut conn)
            .await?;
    }
    for shard in 0..SHARDS {
        if let Some(leader) = planned_leader(shard, &seeded) {
            ShardLease::acquire(&mut conn, &keys, ShardId(shard), leader, TTL)
                .await?
                .with_context(|| format!("shard {shard} is free"))?;
        }
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    for (shard, age) in [(1, 30), (2, 600)] {
        let position = ((now - age) << 32) | 1;
        ensure!(initialize_checkpoint(&mut conn, &keys, ShardId(shard), position).await?);
    }
    Ok(seeded)
}

/// Serves the real router on a free port; returns the page's URL and the
/// token that stops the server.
async fn serve(status: Option<StatusSource>) -> Result<(String, CancellationToken)> {
    let (base, stop) = serve_status(status).await?;
    Ok((format!("{base}/status/page"), stop))
}

fn source_for(redis: &RedisServer, member: &MemberId) -> Result<StatusSource> {
    Ok(StatusSource::connect(
        redis::Client::open(redis.url())?,
        PREFIX,
        SHARDS,
        Some(member.clone()),
    )?)
}

/// `chromium` on the PATH, or a failure telling how to get it.
fn chromium() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|candidate| candidate.is_file())
        .context(
            "chromium is not installed: the status page tests need headless Chromium; \
             run scripts/setup.sh (it installs Debian's `chromium` package)",
        )
}

/// Runs headless Chromium on `url` with `extra` arguments, isolated from
/// the network and from any profile, killed after [`BROWSER_TIMEOUT`].
fn run_chromium(url: &str, extra: &[String]) -> Result<Output> {
    let binary = chromium()?;
    let _one_at_a_time = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let profile = tempfile::tempdir().context("temp dir for the Chromium profile")?;
    let child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills its helpers too.
        .process_group(0)
        .spawn()
        .context("start chromium")?;
    let pid = child.id();
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match wait.recv_timeout(BROWSER_TIMEOUT) {
        Ok(output) => Ok(output?),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-9", "--", &format!("-{pid}")])
                .status();
            bail!("chromium did not finish within {BROWSER_TIMEOUT:?}; killed it")
        }
    }
}

/// The page's DOM after its script has run (and refreshed a few times).
async fn rendered_dom(url: &str) -> Result<String> {
    let url = url.to_owned();
    let output =
        tokio::task::spawn_blocking(move || run_chromium(&url, &["--dump-dom".to_owned()]))
            .await??;
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success() && dom.contains("</html>"),
        "chromium failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(dom)
}

/// `text` with its tags removed: what a reader sees of an element.
fn visible_text(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text
}

/// The inner HTML of the first element whose opening tag contains `marker`
/// (up to the next `</div>`/`</span>` of the same kind at depth zero is more
/// than these tests need: the elements read have no nested element of the
/// same tag).
fn element<'a>(dom: &'a str, marker: &str, close: &str) -> Result<&'a str> {
    let start = dom
        .find(marker)
        .with_context(|| format!("no {marker} in the DOM"))?;
    let open_end = start + dom[start..].find('>').context("unclosed tag")? + 1;
    let end = open_end
        + dom[open_end..]
            .find(close)
            .with_context(|| format!("no {close} after {marker}"))?;
    Ok(&dom[open_end..end])
}

/// A value of `attribute="..."` inside `tag_text`.
fn attribute<'a>(tag_text: &'a str, attribute: &str) -> Option<&'a str> {
    let key = format!("{attribute}=\"");
    let start = tag_text.find(&key)? + key.len();
    let len = tag_text[start..].find('"')?;
    Some(&tag_text[start..start + len])
}

/// One shard cell as rendered.
#[derive(Debug)]
struct Cell {
    class: String,
    shard: u16,
    leader: Option<String>,
    style: Option<String>,
    text: String,
}

/// Every shard cell in the grid, in DOM order.
fn shard_cells(dom: &str) -> Result<Vec<Cell>> {
    let pieces: Vec<&str> = dom.split("<div class=\"shard ").skip(1).collect();
    pieces
        .iter()
        .map(|piece| {
            let tag = &piece[..piece.find('>').context("unclosed cell tag")?];
            let class = tag[..tag.find('"').context("class")?].to_owned();
            let shard = attribute(tag, "data-shard")
                .context("data-shard")?
                .parse()?;
            // The cell's own text: up to the next cell or the grid's end.
            let body_end = piece.find("<div id=\"legend\"").unwrap_or(piece.len());
            Ok(Cell {
                class,
                shard,
                leader: attribute(tag, "data-leader").map(str::to_owned),
                style: attribute(tag, "style").map(str::to_owned),
                text: visible_text(&piece[tag.len() + 1..body_end]),
            })
        })
        .collect()
}

/// The legend's member entries: id and swatch style.
fn legend(dom: &str) -> Result<Vec<(String, String)>> {
    let legend = element(dom, "id=\"legend\"", "<footer")?;
    legend
        .split("<span class=\"member\"")
        .skip(1)
        .filter_map(|item| {
            let id = attribute(item, "data-member")?;
            Some((id, item))
        })
        .map(|(id, item)| {
            let swatch = item.find("class=\"swatch\"").context("swatch")?;
            let style = attribute(&item[swatch..], "style").context("swatch style")?;
            Ok((id.to_owned(), style.to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_draws_every_shard_coloured_by_its_leader() -> Result<()> {
    let started = Instant::now();
    let redis = RedisServer::start()?;
    let seeded = seed(&redis).await?;
    let (url, stop) = serve(Some(source_for(&redis, &seeded.a)?)).await?;
    let dom = rendered_dom(&url).await;
    let screenshot_dir = tempfile::tempdir()?;
    let screenshot = screenshot_dir.path().join("status-page.png");
    let shot = take_screenshot(&url, &screenshot).await;
    stop.cancel();
    let dom = dom?;

    let cells = shard_cells(&dom)?;
    assert_eq!(cells.len(), usize::from(SHARDS), "{cells:#?}");
    let legend = legend(&dom)?;
    let mut ids: Vec<&str> = legend.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec![seeded.a.as_str(), seeded.b.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want, "the legend names the members");
    let colour = |id: &str| legend.iter().find(|(m, _)| m == id).map(|(_, s)| s.clone());
    assert_ne!(
        colour(seeded.a.as_str()),
        colour(seeded.b.as_str()),
        "two members, two colours"
    );

    for (i, cell) in cells.iter().enumerate() {
        assert_eq!(usize::from(cell.shard), i, "{cell:?}");
        assert!(
            cell.text.starts_with(&cell.shard.to_string()),
            "the cell shows its number: {cell:?}"
        );
        match planned_leader(cell.shard, &seeded) {
            None => {
                assert_eq!(cell.class, "unled", "{cell:?}");
                assert_eq!(cell.leader, None, "{cell:?}");
                assert!(cell.text.contains("NO LEADER"), "{cell:?}");
                assert!(cell.text.contains("epoch –"), "{cell:?}");
            }
            Some(leader) => {
                assert_eq!(cell.class, "led", "{cell:?}");
                assert_eq!(cell.leader.as_deref(), Some(leader.as_str()), "{cell:?}");
                assert!(cell.text.contains(leader.as_str()), "{cell:?}");
                assert!(cell.text.contains("epoch 1"), "{cell:?}");
                assert_eq!(
                    cell.style,
                    colour(leader.as_str()),
                    "a cell has its leader's legend colour: {cell:?}"
                );
            }
        }
    }
    assert!(cells[1].text.contains("lag 3"), "30 s lag: {:?}", cells[1]);
    assert!(
        cells[2].text.contains("lag 10m"),
        "600 s lag: {:?}",
        cells[2]
    );
    assert!(
        cells[0].text.contains("lag –"),
        "no checkpoint: {:?}",
        cells[0]
    );

    let summary = visible_text(element(&dom, "id=\"summary\"", "</div>")?);
    assert!(
        summary.starts_with("8 shards: 7 led, 1 unled · 2 members · max lag 10m "),
        "{summary}"
    );
    let refreshed = visible_text(element(&dom, "id=\"refreshed\"", "</span>")?);
    assert!(refreshed.starts_with("Last refresh "), "{refreshed}");
    assert!(dom.contains("data-state=\"ok\""), "no error banner");
    assert!(!dom.contains("class=\"stale\""), "the grid is live");

    shot?;
    check_png(&screenshot)?;
    if let Some(keep) = std::env::var_os("REDTAIL_KEEP_SCREENSHOT") {
        std::fs::copy(&screenshot, keep)?;
    }
    eprintln!("status page test took {:?}", started.elapsed());
    Ok(())
}

async fn take_screenshot(url: &str, file: &Path) -> Result<()> {
    let url = url.to_owned();
    let args = vec![
        format!("--screenshot={}", file.display()),
        "--window-size=1200,800".to_owned(),
        "--hide-scrollbars".to_owned(),
    ];
    let output = tokio::task::spawn_blocking(move || run_chromium(&url, &args)).await??;
    ensure!(
        output.status.success(),
        "chromium screenshot failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The file is a 1200×800 PNG with more in it than a blank page.
fn check_png(file: &Path) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("no screenshot at {file:?}"))?;
    ensure!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {file:?}"
    );
    ensure!(bytes.len() > 24, "truncated PNG");
    let width = u32::from_be_bytes(bytes[16..20].try_into()?);
    let height = u32::from_be_bytes(bytes[20..24].try_into()?);
    ensure!((width, height) == (1200, 800), "{width}x{height}");
    // A blank 1200×800 page compresses to a few kilobytes; coloured cells,
    // hatching and text do not.
    ensure!(
        bytes.len() > 20_000,
        "screenshot suspiciously small: {} bytes",
        bytes.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_says_when_cluster_mode_is_off() -> Result<()> {
    let (url, stop) = serve(None).await?;
    let dom = rendered_dom(&url).await;
    stop.cancel();
    let dom = dom?;
    assert!(dom.contains("data-state=\"off\""), "{dom}");
    let state = visible_text(element(&dom, "id=\"state\"", "</div>")?);
    assert!(state.starts_with("Cluster mode is off"), "{state}");
    assert!(shard_cells(&dom)?.is_empty(), "no shards to draw");
    Ok(())
}

/// Serves the real router behind a layer that kills Redis just before the
/// second `/status` request reaches it: the page has drawn one grid, and
/// every later refresh meets a dead Redis.
async fn serve_then_lose_redis(
    source: StatusSource,
    redis: RedisServer,
) -> Result<(String, CancellationToken, Arc<AtomicUsize>)> {
    let requests = Arc::new(AtomicUsize::new(0));
    let redis = Arc::new(Mutex::new(redis));
    let counted = requests.clone();
    let app = http::router(status_state(Some(source))).layer(middleware::from_fn(
        move |request: Request, next: Next| {
            let counted = counted.clone();
            let redis = redis.clone();
            async move {
                if request.uri().path() == "/status" && counted.fetch_add(1, Ordering::SeqCst) == 1
                {
                    redis.lock().unwrap_or_else(|e| e.into_inner()).stop();
                }
                next.run(request).await
            }
        },
    ));
    let listener = http::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/status/page", listener.local_addr()?);
    let stop = CancellationToken::new();
    let cancelled = stop.clone();
    tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, service)
            .with_graceful_shutdown(async move { cancelled.cancelled().await })
            .await
    });
    Ok((url, stop, requests))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_greys_the_last_grid_when_redis_is_unreachable() -> Result<()> {
    let redis = RedisServer::start()?;
    let seeded = seed(&redis).await?;
    let source = source_for(&redis, &seeded.a)?;
    let (url, stop, requests) = serve_then_lose_redis(source, redis).await?;
    let dom = rendered_dom(&url).await;
    stop.cancel();
    let dom = dom?;
    ensure!(
        requests.load(Ordering::SeqCst) >= 2,
        "the page refreshed only {} time(s)",
        requests.load(Ordering::SeqCst)
    );
    assert!(dom.contains("data-state=\"down\""), "{dom}");
    let state = visible_text(element(&dom, "id=\"state\"", "</div>")?);
    assert!(state.starts_with("Redis is unreachable"), "{state}");
    assert!(state.contains("last grid read, greyed out"), "{state}");
    assert!(dom.contains("<div id=\"grid\" class=\"stale\">"), "greyed");
    assert_eq!(shard_cells(&dom)?.len(), usize::from(SHARDS), "kept");
    let refreshed = visible_text(element(&dom, "id=\"refreshed\"", "</span>")?);
    assert!(refreshed.starts_with("Last good refresh "), "{refreshed}");
    Ok(())
}

#[test]
fn dom_readers_table() {
    let cases = [
        ("<b>8</b> shards", "8 shards"),
        ("plain", "plain"),
        ("<div class=\"x\">a<span>b</span></div>", "ab"),
    ];
    for (html, want) in cases {
        assert_eq!(visible_text(html), want, "{html}");
    }
    assert_eq!(attribute("div data-shard=\"3\" x", "data-shard"), Some("3"));
    assert_eq!(attribute("div", "data-shard"), None);
}
