//! `redtail status`: the shard table (or its JSON) from a terminal.
//!
//! It reads the same report as `/status`, from the first `OTR_REDIS_URL`,
//! so it works when no instance is up (which is when it is needed most).
//! Exit codes follow the rest of the CLI: 0 when the cluster was read, 1
//! when Redis could not be read, 2 for bad arguments. Errors pass through
//! [`hide_secrets`] before printing, so a URL password never reaches the
//! terminal even if a client error were to quote one.

use std::io::Write;
use std::process::ExitCode;

use redis::IntoConnectionInfo;

use crate::config::{RedisKind, StatusArgs, StatusFormat};

use super::render::render_table;
use super::{StatusError, StatusSource, hide_secrets};

/// What `redtail status` prints: the output proper, and notes for stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusOutput {
    /// The table or the JSON document, ending with a newline.
    pub text: String,
    /// Things the operator should know that are not the status itself.
    pub notes: Vec<String>,
}

/// Runs `redtail status`: prints the report and returns the exit code for
/// `main` to return.
pub async fn run_status_command(args: StatusArgs) -> ExitCode {
    match read_status(&args).await {
        Ok(output) => {
            for note in &output.notes {
                eprintln!("redtail status: {note}");
            }
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(output.text.as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                // A closed pipe (`| head`) is not worth a message.
                Err(_) => ExitCode::FAILURE,
            }
        }
        Err(error) => {
            eprintln!("redtail status: {}", scrubbed(&error, &args));
            ExitCode::from(error.exit_code())
        }
    }
}

/// The error's message with the Redis URL's password hidden, both as
/// written (maybe percent-encoded) and as decoded for the server.
fn scrubbed(error: &StatusError, args: &StatusArgs) -> String {
    let Some(url) = args.redis_url.0.first() else {
        return error.to_string();
    };
    let decoded = url
        .url
        .expose_secret()
        .into_connection_info()
        .ok()
        .and_then(|info| info.redis_settings().password().map(str::to_owned));
    let written = url.url.expose_password().unwrap_or_default();
    hide_secrets(
        &error.to_string(),
        &[written, decoded.as_deref().unwrap_or_default()],
    )
}

/// Reads the cluster named by `args` and renders it in `args.format`.
///
/// The shard count stored by the cluster wins over `OTR_CLUSTER_SHARDS`:
/// the stored one is what the members agreed on, and a status view that
/// invented other shards would mislead.
pub async fn read_status(args: &StatusArgs) -> Result<StatusOutput, StatusError> {
    let url = args
        .redis_url
        .0
        .first()
        .ok_or_else(|| StatusError::Settings("OTR_REDIS_URL names no Redis".to_owned()))?;
    if url.kind == RedisKind::Sentinel {
        return Err(StatusError::Settings(format!(
            "{} is a Sentinel URL; redtail status reads the cluster through a redis:// or \
             rediss:// URL of the primary (the cluster's leases do not go through Sentinel \
             either)",
            url.url.redacted()
        )));
    }
    let client = redis::Client::open(url.url.expose_secret())
        .map_err(|e| StatusError::Settings(format!("cannot use {}: {e}", url.url.redacted())))?;
    let mut source = StatusSource::connect(
        client,
        &args.redis_metadata_prefix,
        args.cluster_shards,
        None,
    )?;
    let mut notes = Vec::new();
    match source.stored_shard_count().await? {
        Some(stored) if stored != args.cluster_shards => {
            notes.push(format!(
                "the cluster in Redis uses {stored} shards; showing those \
                 (OTR_CLUSTER_SHARDS={} ignored)",
                args.cluster_shards
            ));
            source = source.with_shards(stored)?;
        }
        Some(_) => {}
        None => notes.push(format!(
            "no cluster member has started under the prefix {:?} yet (no stored shard \
             count); showing {} empty shards",
            args.redis_metadata_prefix, args.cluster_shards
        )),
    }
    let report = source.report().await?;
    let text = match args.format {
        StatusFormat::Table => render_table(&report),
        StatusFormat::Json => {
            let mut json = serde_json::to_string_pretty(&report)
                .expect("a report of strings and numbers always serialises");
            json.push('\n');
            json
        }
    };
    Ok(StatusOutput { text, notes })
}
