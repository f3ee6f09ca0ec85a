//! Configuration errors, phrased for operators who set environment variables.
//!
//! clap reports problems in terms of flags (`--max-catch-up <DURATION>`);
//! most deployments set `OTR_MAX_CATCH_UP` and never see a flag, so every
//! error here names both, and any value that may hold a credential is
//! redacted before it is shown.

use std::fmt;

use clap::error::{ContextKind, ContextValue, ErrorKind};

use super::secret::{REDACTED, redact_text};

/// Exit code for bad configuration, the conventional usage-error code (and
/// clap's).
pub const EXIT_USAGE: i32 = 2;

/// A setting as the operator knows it: its variable and its flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingName {
    /// The environment variable read for it in this run, if it has one.
    pub env: Option<String>,
    /// The flag, e.g. `--max-catch-up`.
    pub flag: String,
}

impl fmt::Display for SettingName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.env {
            Some(env) => write!(f, "{env} ({})", self.flag),
            None => f.write_str(&self.flag),
        }
    }
}

/// Why the configuration was refused. `Debug` prints the same redacted
/// text as `Display` (clap's own `Debug` would show raw arguments).
#[derive(thiserror::Error)]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("invalid value \"{value}\" for {setting}: {reason}")]
    Invalid {
        /// Which setting.
        setting: SettingName,
        /// The value, redacted when the setting is secret.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// Required settings that were not given.
    #[error("missing required setting{}: {}", plural(.0.len()), list(.0))]
    Missing(Vec<SettingName>),
    /// Any other command-line problem (unknown flag, ...), or a request for
    /// help or the version, which is not a failure: see [`exit_on_error`].
    #[error("{}", scrub_passwords(&.0.render().to_string()))]
    Usage(clap::Error),
    /// [`crate::config::Config::from_env_and_args`] was given another subcommand.
    #[error("expected the run command, got `{0}`")]
    NotRun(&'static str),
}

impl fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConfigError({:?})", self.to_string())
    }
}

impl ConfigError {
    /// The process exit code this error calls for: 0 for `--help` and
    /// `--version`, 2 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Usage(err) if !err.use_stderr() => 0,
            _ => EXIT_USAGE,
        }
    }
}

/// Prints the error (help and version to stdout, problems to stderr) and
/// exits: 0 for help/version, 2 for bad configuration.
pub fn exit_on_error(err: ConfigError) -> ! {
    let code = err.exit_code();
    match &err {
        ConfigError::Usage(clap_err) if code == 0 => clap_err.exit(),
        ConfigError::Usage(_) => eprintln!("{err}"),
        _ => eprintln!("error: {err}"),
    }
    std::process::exit(code)
}

/// Turns a clap error into a [`ConfigError`] naming variables, using the
/// command it came from to map flags back to their arguments.
pub(super) fn from_clap(command: &clap::Command, err: clap::Error) -> ConfigError {
    match err.kind() {
        ErrorKind::ValueValidation | ErrorKind::InvalidValue => invalid_value(command, err),
        ErrorKind::MissingRequiredArgument => {
            let names = match err.get(ContextKind::InvalidArg) {
                Some(ContextValue::Strings(flags)) => flags
                    .iter()
                    .map(|flag| setting_name(command, flag).0)
                    .collect(),
                _ => Vec::new(),
            };
            if names.is_empty() {
                ConfigError::Usage(err)
            } else {
                ConfigError::Missing(names)
            }
        }
        _ => ConfigError::Usage(err),
    }
}

fn invalid_value(command: &clap::Command, err: clap::Error) -> ConfigError {
    let Some(ContextValue::String(flag)) = err.get(ContextKind::InvalidArg) else {
        return ConfigError::Usage(err);
    };
    let (setting, secret) = setting_name(command, flag);
    let raw = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => value.clone(),
        _ => String::new(),
    };
    let value = if !secret {
        raw
    } else if raw.contains("://") {
        redact_text(&raw)
    } else if raw.is_empty() {
        raw
    } else {
        REDACTED.to_owned()
    };
    let reason = match (
        std::error::Error::source(&err),
        err.get(ContextKind::ValidValue),
    ) {
        (Some(source), _) => source.to_string(),
        (None, Some(ContextValue::Strings(valid))) => {
            format!("expected one of {}", valid.join(", "))
        }
        (None, _) => "not accepted".to_owned(),
    };
    ConfigError::Invalid {
        setting,
        value,
        reason,
    }
}

/// Finds the argument behind clap's `--flag <VALUE>` rendering; the bool
/// says whether its value is secret (its env value is hidden from help).
fn setting_name(command: &clap::Command, rendered: &str) -> (SettingName, bool) {
    let flag = rendered
        .split([' ', '[', '=', '<'])
        .next()
        .unwrap_or(rendered)
        .to_owned();
    let arg = std::iter::once(command)
        .chain(command.get_subcommands())
        .flat_map(|cmd| cmd.get_arguments())
        .find(|arg| {
            arg.get_long()
                .is_some_and(|long| flag == format!("--{long}"))
        });
    match arg {
        Some(arg) => {
            // An argument whose variable was switched off for this run (set
            // but empty) is still known to operators by its canonical name.
            let env = arg
                .get_env()
                .map(|e| e.to_string_lossy().into_owned())
                .or_else(|| canonical_env(arg.get_id().as_str()));
            (SettingName { env, flag }, arg.is_hide_env_values_set())
        }
        None => (SettingName { env: None, flag }, true),
    }
}

/// The variable an argument reads when nothing is adjusted.
fn canonical_env(id: &str) -> Option<String> {
    let command = <super::Cli as clap::CommandFactory>::command();
    let arg = command
        .get_subcommands()
        .flat_map(|sub| sub.get_arguments())
        .find(|arg| arg.get_id() == id)?;
    arg.get_env().map(|e| e.to_string_lossy().into_owned())
}

/// Replaces the password of anything URL-shaped in free text with `***`,
/// for clap messages that echo what was typed.
pub(super) fn scrub_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme_end) = rest.find("://") {
        let (before, after) = rest.split_at(scheme_end + 3);
        out.push_str(before);
        let token_end = after.find(|c: char| c.is_whitespace() || "'\"`".contains(c));
        let token_end = token_end.unwrap_or(after.len());
        let (token, tail) = after.split_at(token_end);
        match token.rfind('@') {
            Some(at) => {
                let userinfo = &token[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => out.push_str(&format!("{user}:{REDACTED}")),
                    None => out.push_str(userinfo),
                }
                out.push_str(&token[at..]);
            }
            None => out.push_str(token),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn list(names: &[SettingName]) -> String {
    names
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
