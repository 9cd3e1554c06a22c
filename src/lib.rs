//! rivet: a bare-metal deploy agent that does the job of ironic-python-agent, wire-compatible
//! with the Ironic conductor.
//!
//! The crate reads like the system (`docs/` has the contracts):
//! - [`image`]: what an image is (`image_info`), how it is fetched, how it is checked;
//! - [`disk`]: the install target, the writer stage, partition tables;
//! - [`deploy`]: the one deploy orchestrator and the data path it runs;
//! - [`configdrive`]: the config drive: decoding, checking, rebuilding as vfat;
//! - [`erase`]: disk erasure (IPA's erase clean steps), safe, verifiable and fast;
//! - [`boot`]: UEFI boot entries, written natively through efivarfs;
//! - [`agent`]: IPA's REST API, its extensions, lookup and heartbeat, the server;
//! - [`config`]: typed settings from the kernel command line, a file, the environment, flags;
//! - [`cli`]: the `rivet` command line;
//! - [`external`]: running the few external tools rivet needs;
//! - [`errors`]: IPA's error types, as the conductor sees them;
//! - [`system`]: what `system.lockdown` does to the machine (network interfaces down);
//! - [`inspect`]: the hardware inventory and the inspection POST before lookup.

#![warn(unreachable_pub)]

pub mod agent;
pub mod boot;
pub mod cli;
pub mod config;
pub(crate) mod configdrive;
pub mod demo;
pub mod deploy;
pub mod disk;
pub mod erase;
pub mod errors;
pub(crate) mod external;
pub mod fuzzing;
pub mod image;
pub mod inspect;
pub mod system;
