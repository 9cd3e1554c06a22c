//! Progress of a long operation on the CLI: a bar when stderr is a terminal, a log line every
//! few seconds otherwise.

use std::io::IsTerminal;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::image::fetch::Progress;

/// Runs `work` with a fresh [`Progress`] shown while it runs.
pub(super) fn with_progress<R>(work: impl FnOnce(Arc<Progress>) -> R) -> R {
    let progress = Arc::new(Progress::default());
    // Dropping `done_tx` wakes the watcher at once (no sleeping tick to wait out).
    let (done_tx, done_rx) = channel::<()>();
    let watcher = {
        let p = Arc::clone(&progress);
        std::thread::spawn(move || watch(&p, &done_rx))
    };
    let res = work(progress);
    drop(done_tx);
    let _ = watcher.join();
    res
}

/// Waits for one tick; false once the work is over.
fn tick(done: &Receiver<()>) -> bool {
    matches!(
        done.recv_timeout(Duration::from_millis(200)),
        Err(RecvTimeoutError::Timeout)
    )
}

fn watch(p: &Progress, done: &Receiver<()>) {
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        while tick(done) {
            if let Some(len) = p.content_length() {
                bar.set_length(len);
            }
            bar.set_position(p.bytes_transferred());
        }
        bar.finish_and_clear();
    } else {
        let mut last = Instant::now();
        while tick(done) {
            if last.elapsed() >= Duration::from_secs(5) {
                last = Instant::now();
                tracing::info!(
                    transferred = p.bytes_transferred(),
                    written = p.bytes_written(),
                    total = ?p.content_length(),
                    "progress"
                );
            }
        }
    }
}
