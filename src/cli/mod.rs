//! The `rivet` command line: one subcommand per module (`deploy`, `demo`, `serve`), the
//! progress display, and the edge where typed errors become an exit status and one line.

mod demo;
mod deploy;
mod progress;
mod serve;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::agent::log::{LogBuffer, TeeWriter};
use crate::errors::AgentError;

/// rivet: deploys OS images to bare-metal disks, as ironic-python-agent does, only faster and
/// safer.
#[derive(Parser)]
#[command(name = "rivet", version, propagate_version = true)]
struct Cli {
    /// Log level filter (e.g. `info`, `debug`, `rivet=trace`); also `RUST_LOG`.
    #[arg(long, global = true, env = "RIVET_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once, at start-up
enum Command {
    /// Download an image, verify its checksum while it streams, and write it to a device.
    ///
    /// Exit status 0 only when the image was written and verified. On failure, one line names
    /// IPA's error type and the cause, and the disk's partition tables are wiped if writing had
    /// begun, so a half-written disk cannot boot.
    Deploy(deploy::DeployArgs),
    /// Deploy a generated sample image from a loopback HTTP server into a regular file: the
    /// whole path of `deploy` with nothing else at hand.
    Demo(demo::DemoArgs),
    /// Run the agent: IPA's REST API for the Ironic conductor, plus lookup and heartbeats when
    /// an Ironic API URL is configured.
    ///
    /// Every option can also come from the kernel command line (`ipa-<option>=VALUE`, e.g.
    /// `ipa-api-url=`), the config file (`option = VALUE` in TOML) or the environment
    /// (`RIVET_<OPTION>`); later sources win: kernel command line, file, environment, flags.
    Serve(serve::ServeArgs),
}

/// Parses the command line, runs the subcommand, and turns its result into an exit status.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    // Every log line also goes to a bounded buffer, for `log.collect_system_logs`.
    let logs = Arc::new(LogBuffer::default());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(TeeWriter(Arc::clone(&logs)))
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
    let res = match cli.command {
        Command::Deploy(a) => deploy::deploy(a),
        Command::Demo(a) => demo::demo(a),
        Command::Serve(a) => serve::serve(a, logs),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<AgentError>() {
                Some(ae) => eprintln!("rivet: {}: {}", ae.type_name(), ae.details()),
                None => eprintln!("rivet: error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
