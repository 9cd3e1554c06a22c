//! The agent: IPA's REST API and the extensions the Ironic conductor drives.
//!
//! - [`api`]: HTTP routes and the exact wire shapes;
//! - [`commands`]: the command engine (ordered results, busy rule, async runner);
//! - [`extensions`]: command names → bodies;
//! - [`standby`], [`steps`] (deploy, clean, service), [`bootloader`] (image), [`system`]
//!   (system, rescue), [`log`]: the extensions themselves;
//! - [`server`]: TLS, the listener, the Ironic loop, stopping;
//! - [`ironic`]: lookup and heartbeat;
//! - [`power`]: how the machine is rebooted or powered off.

pub mod api;
pub mod bootloader;
pub mod commands;
pub mod extensions;
pub mod ironic;
pub mod log;
pub mod power;
pub mod server;
pub mod standby;
pub mod steps;
pub mod system;
pub mod tls;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde_json::Value;

use crate::config::{Scheme, Settings};
use crate::disk::root;
use crate::errors::AgentError;
use crate::image::fetch::FetchConfig;

/// The version rivet reports as `agent_version` and in `/v1/status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// State the standby extension keeps between commands (memory only, as IPA).
#[derive(Debug, Default)]
pub struct StandbyState {
    /// Id of the last image written through the (non-streaming) cache path.
    pub cached_image_id: Option<String>,
    /// What `get_partition_uuids` answers.
    pub partition_uuids: Option<Value>,
}

/// The running agent.
pub struct Agent {
    settings: RwLock<Settings>,
    /// The command list.
    pub engine: commands::Engine,
    token: RwLock<Option<String>>,
    node: RwLock<Option<Value>>,
    standby: Mutex<StandbyState>,
    power: Box<dyn power::PowerBackend>,
    /// When the agent started (seconds since the epoch), for `/v1/status`.
    pub started_at: f64,
    /// Wakes the heartbeat loop (after every async command).
    pub heartbeat_now: tokio::sync::Notify,
    /// Recent log lines, for `log.collect_system_logs`.
    pub logs: Arc<log::LogBuffer>,
    /// http or https, as the API is really served (`GET /` links use it).
    scheme: std::sync::OnceLock<Scheme>,
    /// Set when a command asks the agent to stop serving (lockdown, rescue).
    stop: tokio::sync::watch::Sender<Option<system::Stop>>,
}

impl Agent {
    /// An agent with these settings.
    pub fn new(settings: Settings, logs: Arc<log::LogBuffer>) -> Arc<Agent> {
        let power = power::backend(settings.power_backend, settings.power_log.clone());
        let token = settings.agent_token.clone();
        let started_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Arc::new(Agent {
            settings: RwLock::new(settings),
            engine: commands::Engine::default(),
            token: RwLock::new(token),
            node: RwLock::new(None),
            standby: Mutex::new(StandbyState::default()),
            power,
            started_at,
            heartbeat_now: tokio::sync::Notify::new(),
            logs,
            scheme: std::sync::OnceLock::new(),
            stop: tokio::sync::watch::Sender::new(None),
        })
    }

    /// A copy of the current settings.
    pub fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes the settings in place (Ironic's lookup overrides, auto-TLS).
    pub fn update_settings<T>(&self, f: impl FnOnce(&mut Settings) -> T) -> T {
        f(&mut self.settings.write().unwrap_or_else(|p| p.into_inner()))
    }

    /// Asks the server to stop serving the API (after the current answers are sent).
    pub fn request_stop(&self, why: system::Stop) {
        self.stop.send_replace(Some(why));
    }

    /// Resolves once a stop was requested, with its reason.
    pub async fn stopped(&self) -> system::Stop {
        let mut rx = self.stop.subscribe();
        loop {
            if let Some(why) = *rx.borrow_and_update() {
                return why;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as the agent: never reached while it exists.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Records the scheme the API is served with, once it is known.
    pub fn set_scheme(&self, scheme: Scheme) {
        let _ = self.scheme.set(scheme);
    }

    /// The scheme the API is served with (`http` until the server says otherwise).
    pub fn scheme(&self) -> Scheme {
        self.scheme.get().copied().unwrap_or(Scheme::Http)
    }

    /// Whether `given` is the agent's token. With no token at all, nothing is accepted.
    pub fn token_ok(&self, given: Option<&str>) -> bool {
        let t = self.token.read().unwrap_or_else(|p| p.into_inner());
        matches!((t.as_deref(), given), (Some(a), Some(b)) if a == b)
    }

    /// Whether the agent holds a token.
    pub fn has_token(&self) -> bool {
        self.token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// The token, for heartbeats.
    pub fn token(&self) -> Option<String> {
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets the token (from lookup).
    pub fn set_token(&self, token: &str) {
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = Some(token.to_string());
    }

    /// Caches the node Ironic described (lookup, or the `node` param of deploy commands).
    pub fn cache_node(&self, node: &Value) {
        if node.is_object() {
            *self.node.write().unwrap_or_else(|p| p.into_inner()) = Some(node.clone());
        }
    }

    /// The cached node.
    pub fn node(&self) -> Option<Value> {
        self.node.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The standby extension's state.
    pub fn standby(&self) -> MutexGuard<'_, StandbyState> {
        self.standby.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The power backend.
    pub fn power(&self) -> &dyn power::PowerBackend {
        self.power.as_ref()
    }

    /// Download settings, with Ironic's lookup overrides applied.
    pub fn fetch_config(&self) -> FetchConfig {
        self.settings().fetch_config()
    }

    /// The install device: `root_device` when set, else chosen from sysfs with the node's
    /// root device hints (SPEC §9).
    pub fn root_device(&self) -> Result<PathBuf, AgentError> {
        let settings = self.settings();
        if let Some(p) = settings.root_device {
            let allowed = &settings.block_devices.0;
            if !allowed.is_empty() && !allowed.iter().any(|d| p == std::path::Path::new(d)) {
                return Err(AgentError::DeviceNotFound(format!(
                    "The configured root device {} is not one of block_devices ({})",
                    p.display(),
                    allowed.join(",")
                )));
            }
            if !p.exists() {
                return Err(AgentError::DeviceNotFound(format!(
                    "The configured root device {} does not exist",
                    p.display()
                )));
            }
            return Ok(p);
        }
        let node = self.node().unwrap_or(Value::Null);
        let hints = node
            .pointer("/instance_info/root_device")
            .filter(|v| v.as_object().is_some_and(|o| !o.is_empty()))
            .or_else(|| node.pointer("/properties/root_device"));
        let skip: Vec<Value> = node
            .pointer("/properties/skip_block_devices")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        root::select(&self.disks(), hints, &skip)
    }

    /// The disks the agent may list, erase and deploy to: the `block_devices` setting when
    /// given, else every whole disk of the machine.
    pub fn disks(&self) -> Vec<root::BlockDevice> {
        root::list_allowed(
            std::path::Path::new("/sys/block"),
            &self.settings().block_devices.0,
        )
    }
}
