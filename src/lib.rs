//! rivet: a bare-metal deploy agent that does the job of ironic-python-agent's standby
//! extension, wire-compatible with the Ironic conductor.
//!
//! The crate reads like the system:
//! - [`image`]: what an image is (`image_info`), how it is fetched, how it is checked;
//! - [`disk`]: the install target, the writer stage, partition tables;
//! - [`deploy`]: the data path that joins them;
//! - [`agent`]: IPA's REST API, the standby/deploy/log extensions, lookup and heartbeat;
//! - [`config`]: settings from the kernel command line, a file, the environment and flags;
//! - [`configdrive`]: the config drive: decoding, checking, rebuilding as vfat;
//! - [`erase`]: disk erasure (IPA's erase clean steps);
//! - [`errors`]: IPA's error types, as the conductor sees them.

pub mod agent;
pub mod config;
pub mod configdrive;
pub mod demo;
pub mod deploy;
pub mod disk;
pub mod erase;
pub mod errors;
pub mod image;
