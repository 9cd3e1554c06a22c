//! `rivet serve`: its flags, generated from the one table of options
//! ([`crate::config::OPTIONS`]), and the runtime the agent runs on.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::agent::{log::LogBuffer, server, Agent};
use crate::config::{Settings, OPTIONS};

/// The options given on the command line, by option name.
pub(super) struct ServeArgs {
    flags: BTreeMap<String, String>,
}

impl clap::FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = BTreeMap::new();
        for o in OPTIONS {
            if m.value_source(o.name) == Some(clap::parser::ValueSource::CommandLine) {
                if let Some(v) = m.get_one::<String>(o.name) {
                    flags.insert(o.name.to_string(), v.clone());
                }
            }
        }
        Ok(ServeArgs { flags })
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for ServeArgs {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        for o in OPTIONS {
            let help = match o.default {
                Some(d) => format!("{} [default: {d}]", o.help.trim()),
                None => o.help.trim().to_string(),
            };
            let mut a = clap::Arg::new(o.name)
                .long(o.name.replace('_', "-"))
                .value_name("VALUE")
                .help(help);
            if o.switch {
                a = a.num_args(0..=1).default_missing_value("true");
            }
            cmd = cmd.arg(a);
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// The `RIVET_*` part of the environment.
pub(super) fn rivet_env() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("RIVET_"))
        .collect()
}

/// Loads the settings and runs the agent until it stops.
pub(super) fn serve(a: ServeArgs, logs: Arc<LogBuffer>) -> anyhow::Result<()> {
    let settings = Settings::load(&a.flags, &rivet_env())?;
    let agent = Agent::new(settings, logs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(server::run(agent))?;
    Ok(())
}
