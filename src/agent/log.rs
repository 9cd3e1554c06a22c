//! rivet's own log, kept in memory for `log.collect_system_logs`, and that command: a
//! gzip+base64 tar of the log, the kernel log and a few views of the machine (docs/agent-api.md#commands).

use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::{json, Value};

use crate::errors::AgentError;

/// The most recent log output, bounded (the oldest half is dropped when full).
#[derive(Debug, Default)]
pub struct LogBuffer {
    buf: Mutex<Vec<u8>>,
}

const LOG_LIMIT: usize = 8 << 20;

impl LogBuffer {
    /// Appends log text.
    pub fn append(&self, data: &[u8]) {
        let mut b = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() + data.len() > LOG_LIMIT {
            let cut = b.len() / 2;
            b.drain(..cut);
        }
        b.extend_from_slice(data);
    }

    /// Everything kept.
    pub fn contents(&self) -> Vec<u8> {
        self.buf.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A `tracing` writer that copies every line to stderr and to the buffer.
#[derive(Clone)]
pub struct TeeWriter(pub Arc<LogBuffer>);

impl Write for TeeWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.append(data);
        std::io::stderr().write_all(data)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for TeeWriter {
    type Writer = TeeWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Commands whose output goes into the archive, when they exist here.
const COMMANDS: &[(&str, &str, &[&str])] = &[
    ("dmesg", "dmesg", &[]),
    ("df", "df", &["-a"]),
    ("ip_addr", "ip", &["addr"]),
    (
        "lsblk",
        "lsblk",
        &[
            "--all",
            "-oKNAME,MODEL,SIZE,ROTA,TYPE,UUID,PARTUUID,SERIAL,WWN,LOG-SEC,PHY-SEC,TRAN",
        ],
    ),
    ("mount", "mount", &[]),
    ("ps", "ps", &["au"]),
];

/// `log.collect_system_logs`: `{"system_logs": <base64 of a tar.gz>}`.
pub fn collect_system_logs(logs: &LogBuffer) -> Result<Value, AgentError> {
    collect_system_logs_with(logs, vec![])
}

/// [`collect_system_logs`] with more files in the archive (name, content): the journal,
/// the inventory and udev's view of each disk ([`crate::inspect::callback::log_files`]).
pub fn collect_system_logs_with(
    logs: &LogBuffer,
    extra: Vec<(String, Vec<u8>)>,
) -> Result<Value, AgentError> {
    let fail =
        |e: std::io::Error| AgentError::CommandExecution(format!("Cannot collect logs: {e}"));
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut add = |name: &str, data: &[u8]| -> std::io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(now);
        h.set_cksum();
        tar.append_data(&mut h, name, data)
    };
    add("rivet.log", &logs.contents()).map_err(fail)?;
    for (name, cmd, args) in COMMANDS {
        match Command::new(cmd).args(*args).output() {
            Ok(out) => {
                let mut data = out.stdout;
                data.extend_from_slice(&out.stderr);
                add(name, &data).map_err(fail)?;
            }
            Err(e) => tracing::debug!("{cmd}: {e}"),
        }
    }
    for (name, data) in &extra {
        add(name, data).map_err(fail)?;
    }
    let gz = tar.into_inner().map_err(fail)?;
    let bytes = gz.finish().map_err(fail)?;
    Ok(json!({"system_logs": base64::engine::general_purpose::STANDARD.encode(bytes)}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_archive_holds_our_log() {
        let logs = LogBuffer::default();
        logs.append(b"hello from rivet\n");
        let v = collect_system_logs(&logs).unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v["system_logs"].as_str().unwrap())
            .unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&raw[..]));
        let mut found = false;
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap().to_str() == Some("rivet.log") {
                let mut s = String::new();
                e.read_to_string(&mut s).unwrap();
                assert_eq!(s, "hello from rivet\n");
                found = true;
            }
        }
        assert!(found);
    }

    #[test]
    fn the_buffer_is_bounded() {
        let logs = LogBuffer::default();
        for _ in 0..20 {
            logs.append(&vec![b'x'; 1 << 20]);
        }
        assert!(logs.contents().len() <= LOG_LIMIT);
    }
}
