//! Configuration: the command line and the `OTR_*` environment variables.
//!
//! redtail is a drop-in replacement for oplogtoredis, so it reads every
//! `OTR_*` variable oplogtoredis reads, with the same names, defaults and
//! value syntax (Go durations, Go booleans). Each variable is also a flag.
//! Bad input stops the process before anything starts, with exit code 2 and
//! a message that names the variable, because a relay that silently runs
//! with a default the operator did not mean loses or duplicates messages.
//!
//! Entry points: [`parse_invocation`] (what `main` calls),
//! [`Config::from_env_and_args`] (the `run` settings alone) and
//! [`exit_on_error`].

mod duration;
mod errors;
mod reference;
mod secret;
mod settings;
mod values;
mod wiring;

use std::ffi::OsString;

use clap::{CommandFactory, FromArgMatches};

pub use duration::{DurationError, format_go_duration, parse_go_duration};
pub use errors::{ConfigError, SettingName, exit_on_error};
pub use reference::reference_markdown;
pub use secret::{REDACTED, RedisKind, RedisUrl, Secret, SecretUrl, UrlError, redact_text};
pub use settings::{
    CatchUpPolicy, Cli, Config, ExplainArgs, ExplainFormat, IdChannelStyle, Invocation, StatusArgs,
    StatusFormat, TransformSettings,
};
pub use values::RedisUrlList;

/// Variables oplogtoredis also reads without their `OTR_` prefix (its
/// configuration library falls back to the bare name for these), so
/// deployments that relied on the bare names keep working.
pub const UNPREFIXED_FALLBACKS: [(&str, &str); 4] = [
    ("OTR_HTTP_SERVER_ADDR", "HTTP_SERVER_ADDR"),
    (
        "OTR_OPLOG_V2_EXTRACT_SUBFIELD_CHANGES",
        "OPLOG_V2_EXTRACT_SUBFIELD_CHANGES",
    ),
    ("OTR_PG_PERSISTENCE_URL", "PG_PERSISTENCE_URL"),
    ("OTR_SENTRY_DSN", "SENTRY_DSN"),
];

/// The subcommand used when the first argument names none.
const DEFAULT_SUBCOMMAND: &str = "run";

/// Reads the command line (`args` includes the program name, as in
/// `std::env::args_os()`) and the process environment.
pub fn parse_invocation<I, T>(args: I) -> Result<Invocation, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let command = adjust_env(Cli::command(), &|name| std::env::var_os(name));
    parse_with(command, args)
}

impl Config {
    /// The `run` settings from the command line and the environment; `args`
    /// may omit the `run` subcommand. Naming another subcommand is an error.
    pub fn from_env_and_args<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        match parse_invocation(args)? {
            Invocation::Run(config) => Ok(*config),
            Invocation::Explain(_) => Err(ConfigError::NotRun("explain")),
            Invocation::Status(_) => Err(ConfigError::NotRun("status")),
        }
    }
}

/// Parses `args` against a prepared command, rewriting clap's errors so they
/// name the environment variable and never show a secret.
fn parse_with<I, T>(command: clap::Command, args: I) -> Result<Invocation, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args = with_default_subcommand(&command, args.into_iter().map(Into::into).collect());
    let matches = command
        .clone()
        .try_get_matches_from(args)
        .map_err(|err| errors::from_clap(&command, err))?;
    let cli = Cli::from_arg_matches(&matches).map_err(|err| errors::from_clap(&command, err))?;
    Ok(cli.command)
}

/// Inserts `run` when the first argument is neither a subcommand nor a
/// top-level flag, so `redtail --mongo-url ...` keeps oplogtoredis's shape.
fn with_default_subcommand(command: &clap::Command, mut args: Vec<OsString>) -> Vec<OsString> {
    let names_a_command = args
        .get(1)
        .and_then(|arg| arg.to_str())
        .is_some_and(|first| {
            ["help", "-h", "--help", "-V", "--version"].contains(&first)
                || command.get_subcommands().any(|sub| sub.get_name() == first)
        });
    if !names_a_command {
        let at = args.len().min(1);
        args.insert(at, DEFAULT_SUBCOMMAND.into());
    }
    args
}

/// How one argument's environment variable is read in this run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EnvChange {
    /// Set but empty: treated as unset, so the default applies (clap would
    /// otherwise parse "" and fail for numbers and durations).
    Ignore,
    /// The `OTR_` name is unset: read the bare name instead.
    Fallback(&'static str),
}

/// Decides, for each argument of each subcommand, whether its variable is
/// ignored or replaced by its unprefixed fallback. Pure, for testing.
fn env_changes(
    command: &clap::Command,
    lookup: &dyn Fn(&str) -> Option<OsString>,
) -> Vec<(String, String, EnvChange)> {
    let is_set = |name: &str| lookup(name).is_some_and(|v| !v.is_empty());
    let mut changes = Vec::new();
    for sub in command.get_subcommands() {
        for arg in sub.get_arguments() {
            let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
                continue;
            };
            let fallback = UNPREFIXED_FALLBACKS
                .iter()
                .find(|(prefixed, _)| *prefixed == env)
                .map(|(_, bare)| *bare)
                .filter(|bare| !is_set(env) && is_set(bare));
            let change = match (fallback, lookup(env)) {
                (Some(bare), _) => EnvChange::Fallback(bare),
                (None, Some(value)) if value.is_empty() => EnvChange::Ignore,
                _ => continue,
            };
            changes.push((sub.get_name().to_owned(), arg.get_id().to_string(), change));
        }
    }
    changes
}

/// Applies [`env_changes`] to the command.
fn adjust_env(command: clap::Command, lookup: &dyn Fn(&str) -> Option<OsString>) -> clap::Command {
    let changes = env_changes(&command, lookup);
    changes
        .into_iter()
        .fold(command, |command, (sub, id, change)| {
            command.mut_subcommand(sub, |sub| {
                sub.mut_arg(id, |arg| match change {
                    EnvChange::Ignore => arg.env(None),
                    EnvChange::Fallback(bare) => arg.env(bare),
                })
            })
        })
}

#[cfg(test)]
mod tests;
