//! The command engine: IPA's ordered list of command results, the one-at-a-time rule, and
//! sync versus async execution (docs/agent-api.md#commands, docs/agent-api.md#routes).
//!
//! - Every dispatched command is appended to an insertion-ordered list that is never pruned;
//!   Ironic reads the *last* entry.
//! - Before dispatching anything, if the last entry is still `RUNNING` the agent is busy (409).
//! - Sync commands run inside the request; async ones run their validator inside the request
//!   (400 on failure) and their body on a thread of their own, answering `RUNNING` at once.
//! - Any failure is recorded as an agent error; a non-agent failure becomes
//!   `CommandExecutionError`, so the list can always be serialised (IPA's quirk of storing a raw
//!   Python exception and answering 500 forever is not copied).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::watch;

use crate::errors::AgentError;
use crate::image::fetch::Progress;

/// `command_status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Still running.
    Running,
    /// Finished without error.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Ironic's hardware manager versions differ from the agent's (`VersionMismatch`).
    CleanVersionMismatch,
}

impl Status {
    /// The wire string.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Running => "RUNNING",
            Status::Succeeded => "SUCCEEDED",
            Status::Failed => "FAILED",
            Status::CleanVersionMismatch => "CLEAN_VERSION_MISMATCH",
        }
    }
}

/// What a command's body returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A message: wrapped as `{"result": "<cmd>: <msg>"}` (async) or `{"result": "<msg>"}`.
    Text(String),
    /// A JSON object, passed through.
    Json(Value),
    /// Nothing (`command_result: null`).
    Null,
}

/// A command body, run inline (sync) or on its own thread (async).
pub(crate) type Body =
    Box<dyn FnOnce(&Arc<Progress>) -> Result<Outcome, AgentError> + Send + 'static>;

/// A command resolved and validated, ready to run.
pub enum Prepared {
    /// Runs inside the request.
    Sync(Body),
    /// Runs on a thread of its own; the request answers RUNNING.
    Async(Body),
}

struct Data {
    status: Status,
    error: Option<AgentError>,
    result: Option<Value>,
}

/// One entry of the command list.
pub struct Record {
    id: String,
    name: String,
    data: Mutex<Data>,
    progress: Arc<Progress>,
    started: std::time::Instant,
    done: watch::Sender<bool>,
}

impl Record {
    /// The command's id (a UUID).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        // A panic while holding this lock cannot leave Data half-updated (plain assignments).
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the command is still running.
    pub fn is_running(&self) -> bool {
        self.data().status == Status::Running
    }

    /// The result object: exactly IPA's five keys. While running, `command_result` carries a
    /// `progress` object for people (Ironic ignores `command_result` until the end).
    pub fn to_json(&self) -> Value {
        let d = self.data();
        let result = match (&d.result, d.status) {
            (None, Status::Running) if self.progress.bytes_transferred() > 0 => {
                let secs = self.started.elapsed().as_secs_f64().max(1e-3);
                json!({"progress": {
                    "bytes_transferred": self.progress.bytes_transferred(),
                    "bytes_written": self.progress.bytes_written(),
                    "total_bytes": self.progress.content_length(),
                    "rate_bytes_per_second": (self.progress.bytes_written() as f64 / secs) as u64,
                }})
            }
            (r, _) => r.clone().unwrap_or(Value::Null),
        };
        json!({
            "id": self.id,
            "command_name": self.name,
            "command_status": d.status.as_str(),
            "command_error": d.error.as_ref().map(error_json),
            "command_result": result,
        })
    }

    /// Waits until the command has finished.
    pub async fn wait(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    fn finish(&self, outcome: Result<Outcome, AgentError>, is_async: bool) {
        {
            let mut d = self.data();
            match outcome {
                Ok(o) => {
                    d.status = Status::Succeeded;
                    d.result = match o {
                        Outcome::Text(t) if is_async => {
                            Some(json!({"result": format!("{}: {t}", self.name)}))
                        }
                        Outcome::Text(t) => Some(json!({"result": t})),
                        Outcome::Json(v) => Some(v),
                        Outcome::Null => None,
                    };
                }
                Err(e @ AgentError::VersionMismatch(_)) => {
                    d.status = Status::CleanVersionMismatch;
                    d.error = Some(e);
                }
                Err(e) => {
                    tracing::error!(command = %self.name, "command failed: {e}");
                    d.status = Status::Failed;
                    d.error = Some(e);
                }
            }
        }
        self.done.send_replace(true);
    }
}

/// `command_error` on the wire.
pub(crate) fn error_json(e: &AgentError) -> Value {
    json!({"type": e.type_name(), "code": e.code(), "message": e.message(), "details": e.details()})
}

/// Results in dispatch order, and where each id is.
#[derive(Default)]
struct List {
    order: Vec<Arc<Record>>,
    index: HashMap<String, usize>,
}

/// The command list and the busy rule.
#[derive(Default)]
pub struct Engine {
    list: Mutex<List>,
    dispatch: tokio::sync::Mutex<()>,
}

impl Engine {
    fn list(&self) -> MutexGuard<'_, List> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// All results, in the order the commands were dispatched.
    pub fn all(&self) -> Vec<Arc<Record>> {
        self.list().order.clone()
    }

    /// One result by id.
    pub fn get(&self, id: &str) -> Option<Arc<Record>> {
        let l = self.list();
        l.index.get(id).map(|&i| Arc::clone(&l.order[i]))
    }

    /// Runs `resolve` (name lookup and validation) and then the command, under the dispatch
    /// lock, after the busy check. `after_async` runs when an async body finishes (the forced
    /// heartbeat). Errors are HTTP-level failures (no record is made).
    pub async fn dispatch(
        &self,
        name: &str,
        resolve: impl FnOnce() -> Result<Prepared, AgentError>,
        after_async: impl FnOnce() + Send + 'static,
    ) -> Result<Arc<Record>, AgentError> {
        let _guard = self.dispatch.lock().await;
        if let Some(last) = self.list().order.last() {
            if last.is_running() {
                return Err(AgentError::AgentIsBusy(last.name.clone()));
            }
        }
        let prepared = resolve()?;
        let short = name.split_once('.').map(|(_, c)| c).unwrap_or(name);
        let (done, _) = watch::channel(false);
        let record = Arc::new(Record {
            id: uuid::Uuid::new_v4().to_string(),
            name: short.to_string(),
            data: Mutex::new(Data {
                status: Status::Running,
                error: None,
                result: None,
            }),
            progress: Arc::default(),
            started: std::time::Instant::now(),
            done,
        });
        {
            let mut l = self.list();
            let idx = l.order.len();
            l.index.insert(record.id.clone(), idx);
            l.order.push(Arc::clone(&record));
        }
        match prepared {
            Prepared::Sync(body) => {
                let r = Arc::clone(&record);
                let outcome = tokio::task::spawn_blocking(move || run_body(body, &r.progress))
                    .await
                    .unwrap_or_else(|e| Err(AgentError::CommandExecution(format!("{e}"))));
                record.finish(outcome, false);
            }
            Prepared::Async(body) => {
                let r = Arc::clone(&record);
                let spawned = std::thread::Builder::new()
                    .name(format!("agent-command-{}", record.id))
                    .spawn(move || {
                        let outcome = run_body(body, &r.progress);
                        r.finish(outcome, true);
                        after_async();
                    });
                if let Err(e) = spawned {
                    record.finish(
                        Err(AgentError::CommandExecution(format!(
                            "cannot start a thread: {e}"
                        ))),
                        true,
                    );
                }
            }
        }
        Ok(record)
    }
}

/// Runs a body, turning a panic into `CommandExecutionError` so the list stays serialisable.
pub(crate) fn run_body(body: Body, progress: &Arc<Progress>) -> Result<Outcome, AgentError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(progress))).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into());
        Err(AgentError::CommandExecution(msg))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_text(t: &'static str) -> impl FnOnce() -> Result<Prepared, AgentError> {
        move || {
            Ok(Prepared::Sync(Box::new(move |_| {
                Ok(Outcome::Text(t.into()))
            })))
        }
    }

    #[tokio::test]
    async fn sync_results_are_recorded_in_order() {
        let e = Engine::default();
        let a = e
            .dispatch("standby.sync", ok_text("x"), || {})
            .await
            .unwrap();
        let b = e
            .dispatch(
                "standby.get_partition_uuids",
                || {
                    Ok(Prepared::Sync(Box::new(|_| {
                        Ok(Outcome::Json(json!({"a": 1})))
                    })))
                },
                || {},
            )
            .await
            .unwrap();
        let all: Vec<_> = e.all().iter().map(|r| r.to_json()).collect();
        assert_eq!(all[0]["id"], a.id());
        assert_eq!(all[0]["command_name"], "sync");
        assert_eq!(all[0]["command_result"], json!({"result": "x"}));
        assert_eq!(all[1]["id"], b.id());
        assert_eq!(all[1]["command_result"], json!({"a": 1}));
        assert_eq!(all[1].as_object().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn async_commands_make_the_agent_busy_until_they_end() {
        let e = Engine::default();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rec = e
            .dispatch(
                "standby.prepare_image",
                move || {
                    Ok(Prepared::Async(Box::new(move |_| {
                        rx.recv().ok();
                        Ok(Outcome::Text("done".into()))
                    })))
                },
                || {},
            )
            .await
            .unwrap();
        assert_eq!(rec.to_json()["command_status"], "RUNNING");
        let busy = e
            .dispatch("standby.sync", ok_text("x"), || {})
            .await
            .err()
            .unwrap();
        assert_eq!(
            busy.to_string(),
            "Agent is busy: executing command prepare_image"
        );
        assert_eq!(busy.code(), 409);
        tx.send(()).unwrap();
        rec.wait().await;
        assert_eq!(
            rec.to_json()["command_result"],
            json!({"result": "prepare_image: done"})
        );
        e.dispatch("standby.sync", ok_text("x"), || {})
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn failures_and_panics_are_agent_errors() {
        let e = Engine::default();
        let r = e
            .dispatch(
                "x.fail",
                || {
                    Ok(Prepared::Sync(Box::new(|_| {
                        Err(AgentError::Deployment("no".into()))
                    })))
                },
                || {},
            )
            .await
            .unwrap();
        let j = r.to_json();
        assert_eq!(j["command_status"], "FAILED");
        assert_eq!(
            j["command_error"],
            json!({"type": "DeploymentError", "code": 500, "message": "Deploy step failed", "details": "no"})
        );
        let r = e
            .dispatch(
                "x.panic",
                || Ok(Prepared::Sync(Box::new(|_| panic!("boom")))),
                || {},
            )
            .await
            .unwrap();
        assert_eq!(
            r.to_json()["command_error"]["type"],
            "CommandExecutionError"
        );
        let r = e
            .dispatch(
                "x.vm",
                || {
                    Ok(Prepared::Async(Box::new(|_| {
                        Err(AgentError::VersionMismatch("v".into()))
                    })))
                },
                || {},
            )
            .await
            .unwrap();
        r.wait().await;
        assert_eq!(r.to_json()["command_status"], "CLEAN_VERSION_MISMATCH");
        assert_eq!(r.to_json()["command_result"], Value::Null);
        // Validation failures make no record.
        let n = e.all().len();
        assert!(e
            .dispatch(
                "x.bad",
                || Err(AgentError::InvalidCommandParams("p".into())),
                || {}
            )
            .await
            .is_err());
        assert_eq!(e.all().len(), n);
    }
}
