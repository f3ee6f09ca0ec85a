//! The `redtail` binary: reads the configuration and wires the stages
//! together. Everything with behaviour lives in the library.

use std::io::{BufRead, BufReader};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use futures_util::future::BoxFuture;
use redtail::config::{self, Config, ExplainArgs, Invocation, RedisKind};
use redtail::denylist::Denylist;
use redtail::http::{self, HealthProbe, HttpState};
use redtail::pipeline::{Publishing, Relay};
use redtail::position::OplogPosition;
use redtail::publish::Publisher;
use redtail::sharding;
use redtail::sources::oplog::{self, OplogSource};
use redtail::sources::reachability;
use redtail::sources::start::{StartPlan, plan_start};
use redtail::status::StatusSource;
use redtail::telemetry::{logging, metrics::Metrics, traces};
use redtail::transform::Transformer;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let invocation =
        config::parse_invocation(std::env::args_os()).unwrap_or_else(|e| config::exit_on_error(e));
    match invocation {
        Invocation::Explain(args) => explain(args),
        Invocation::Status(args) => {
            let runtime = tokio::runtime::Runtime::new().expect("the Tokio runtime starts");
            runtime.block_on(redtail::status::run_status_command(args))
        }
        Invocation::Run(config) => {
            let runtime = tokio::runtime::Runtime::new().expect("the Tokio runtime starts");
            match runtime.block_on(run(*config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    eprintln!("redtail: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `redtail explain`: what would be published for entries in a file or stdin.
fn explain(args: ExplainArgs) -> ExitCode {
    let input: Box<dyn BufRead> = match args.file.as_deref() {
        None => Box::new(std::io::stdin().lock()),
        Some(path) if path.as_os_str() == "-" => Box::new(std::io::stdin().lock()),
        Some(path) => match std::fs::File::open(path) {
            Ok(file) => Box::new(BufReader::new(file)),
            Err(error) => {
                eprintln!("redtail explain: cannot read {}: {error}", path.display());
                return ExitCode::from(2);
            }
        },
    };
    let settings = args.transform.to_transform();
    let mut out = std::io::stdout().lock();
    match redtail::explain::run_explain(input, &settings, args.format.into(), &mut out) {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("redtail explain: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The relay: connect, decide where to start, then run until a signal.
async fn run(config: Config) -> anyhow::Result<()> {
    let traces = traces::install_from_env().context("setting up OpenTelemetry traces")?;
    let traces_layer = traces.as_ref().map(traces::TracesGuard::layer);
    logging::init_logging_with(config.log_debug, config.log_quiet, traces_layer)
        .context("setting up logging")?;
    if traces.is_some() {
        tracing::info!("exporting OpenTelemetry traces over OTLP (OTEL_* variables)");
    }
    for warning in config.startup_warnings() {
        tracing::warn!("{warning}");
    }
    let metrics = Metrics::new();
    let lanes = (0..config.write_parallelism as u32)
        .map(|lane| Publisher::new(config.publisher_settings(lane), metrics.clone()))
        .collect::<Result<Vec<_>, _>>()
        .context("configuring the Redis publisher")?;
    let mongo = oplog::connect(
        config.mongo_url.expose_secret(),
        config.mongo_connect_timeout,
    )
    .await
    .context("configuring the MongoDB client")?;
    let denylist = connect_denylist(&config, &metrics).await?;
    let mut status = None;
    let probes_stop = CancellationToken::new();
    let (publishing, stored) = if config.cluster {
        let settings = config.cluster_settings().map_err(anyhow::Error::msg)?;
        let (mut sharded, oldest) = sharding::join_cluster(&settings)
            .await
            .context("joining the cluster")?;
        sharded.mongo_reachable = Some(reachability::watch_reachability(
            mongo.clone(),
            settings.reachability(),
            probes_stop.clone(),
        ));
        let client = redis::Client::open(settings.redis_url.as_str())?;
        let member = Some(sharded.coordinator.member().clone());
        status = Some(StatusSource::connect(
            client,
            &settings.prefix,
            settings.shards,
            member,
        )?);
        // A new cluster adopts oplogtoredis's (or single-instance redtail's) position.
        let stored = match oldest {
            Some(oldest) => Some(oldest),
            None => read_stored_position(&config, &lanes[0], &metrics).await?,
        };
        (Publishing::Sharded(sharded), stored)
    } else {
        let stored = read_stored_position(&config, &lanes[0], &metrics).await?;
        (Publishing::Lanes(lanes.clone()), stored)
    };
    let start = start_plan(&config, stored, &metrics);

    let shutdown = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(false));
    let listener = http::bind(&config.http_server_addr).await?;
    let health = Arc::new(RelayHealth {
        mongo: mongo.clone(),
        publisher: lanes[0].clone(),
        timeout: config.mongo_connect_timeout,
    });
    let state = HttpState {
        metrics: metrics.clone(),
        denylist: denylist.clone(),
        health,
        ready: ready.clone(),
        admin_token: config.http_admin_token.clone(),
        status,
    };
    let http_stop = CancellationToken::new();
    let http_task = tokio::spawn(http::serve_on(listener, state, http_stop.clone()));
    tokio::spawn(denylist.clone().run_sync(http_stop.clone()));
    tokio::spawn(watch_signals(shutdown.clone()));

    tracing::info!(
        mongo = %config.mongo_url.redacted(),
        redis = ?config.redis_urls().iter().map(|u| u.url.redacted()).collect::<Vec<_>>(),
        ?start,
        "redtail starting"
    );
    let relay = Relay {
        source: OplogSource::new(&mongo, config.oplog_settings(), metrics.clone()),
        start,
        transformer: Transformer::new(config.transform.to_transform()),
        denylist,
        publishing,
        buffer: config.buffer_size,
        grace: config.shutdown_grace,
        metrics,
    };
    let result = relay.run(shutdown, ready).await;
    probes_stop.cancel();
    http_stop.cancel();
    let _ = http_task.await;
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    result?;
    tracing::info!("redtail stopped cleanly");
    Ok(())
}

/// Reads the stored position: oplogtoredis's keys, so an oplogtoredis
/// fleet's position is adopted.
async fn read_stored_position(
    config: &Config,
    publisher: &Publisher,
    metrics: &Metrics,
) -> anyhow::Result<Option<OplogPosition>> {
    let lanes = 0..config.write_parallelism as u32;
    match publisher.position_store().read_resume_position(lanes).await {
        Ok(stored) => Ok(stored),
        Err(error) if config.resume_from_end_on_failure => {
            tracing::error!(%error, "cannot read the resume position; starting from the end (OTR_RESUME_FROM_END_ON_FAILURE)");
            metrics
                .tail_failed_to_start
                .with_label_values(&["start_time"])
                .inc();
            Ok(None)
        }
        Err(error) => Err(error).context("reading the resume position from Redis"),
    }
}

/// Applies the catch-up rules to the stored position, with logs and metrics.
fn start_plan(config: &Config, stored: Option<OplogPosition>, metrics: &Metrics) -> StartPlan {
    let now = (redtail::telemetry::unix_millis() / 1000) as u64;
    let plan = plan_start(
        stored,
        now,
        config.max_catch_up,
        config.catch_up_policy.into(),
    );
    if let Some(position) = stored {
        let gap = now.saturating_sub(u64::from(position.time)) as f64;
        let status = if matches!(plan, StartPlan::After(_)) {
            "success"
        } else {
            "failed"
        };
        metrics
            .resume_gap_seconds
            .with_label_values(&[status])
            .observe(gap);
        if gap > config.max_catch_up.as_secs_f64() {
            let action = if status == "success" {
                "replay"
            } else {
                "skip_to_end"
            };
            metrics.resume_too_old.with_label_values(&[action]).inc();
            if action == "replay" {
                tracing::warn!(
                    gap_seconds = gap,
                    "the last processed position is older than OTR_MAX_CATCH_UP; replaying from it (OTR_CATCH_UP_POLICY=replay)"
                );
            }
        }
    }
    plan
}

/// The denylist lives in the first Redis that a plain client can reach.
async fn connect_denylist(config: &Config, metrics: &Metrics) -> anyhow::Result<Denylist> {
    let Some(url) = config
        .redis_urls()
        .iter()
        .find(|u| u.kind != RedisKind::Sentinel)
    else {
        tracing::warn!(
            "every OTR_REDIS_URL is a Sentinel URL; the denylist is kept in memory only"
        );
        return Ok(Denylist::in_memory(metrics.clone()));
    };
    let client = redis::Client::open(url.url.expose_secret())
        .with_context(|| format!("opening {} for the denylist", url.url.redacted()))?;
    Denylist::connect(client, &config.redis_metadata_prefix, metrics.clone())
        .await
        .with_context(|| format!("loading the denylist from {}", url.url.redacted()))
}

/// First SIGTERM/SIGINT: drain and stop. Second: stop now.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("shutdown requested: draining (a second signal stops at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: stopping without draining");
    std::process::exit(130);
}

/// `/healthz`'s probes: a MongoDB ping and a PING of every Redis.
struct RelayHealth {
    mongo: mongodb::Client,
    publisher: Publisher,
    timeout: Duration,
}

impl HealthProbe for RelayHealth {
    fn mongo_ok(&self) -> BoxFuture<'_, bool> {
        Box::pin(oplog::ping(&self.mongo, self.timeout))
    }

    fn redis_ok(&self) -> BoxFuture<'_, bool> {
        Box::pin(self.publisher.ping_all())
    }
}
