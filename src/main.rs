//! The `rivet` binary: everything lives in the library ([`rivet::cli`]).

fn main() -> std::process::ExitCode {
    rivet::cli::run()
}
