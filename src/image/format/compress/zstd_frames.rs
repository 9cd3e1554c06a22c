//! Zstandard: several frames decoded at once, one big frame streamed.
//!
//! Files cut into frames (`pzstd`, and tools that write one frame per chunk) are walked frame by
//! frame ([`super::zstd_scan`]) and each frame is decoded whole on a pool of threads, into a
//! buffer of its bounded size, handed on in order without a copy. This is what lets a zstd
//! deploy scale with cores; a whole-frame decode also skips libzstd's window-to-output copy.
//! A frame past [`FRAME_MAX`] (what `zstd` itself writes: one frame for the whole file) goes to
//! libzstd's streaming decoder, which then takes the rest of the file; so does every frame when
//! one thread is allowed (the default on 2 CPUs: the other stages need the other one).
//!
//! Memory: frames being decoded (their input and output bound) and decoded frames not yet
//! written stay within `Limits::memory` (at least one frame in flight, whatever the limit);
//! the frame being read comes on top (at most its compressed size, under [`FRAME_MAX`]).
//! Incompressible `pzstd -3` frames are 8 MiB in and 8 MiB out, so two decoding at once take
//! ~48 MiB (docs/data-path.md has the measured RSS).
//!
//! The rules are the same either way: a frame left unfinished is a truncation, bytes that are
//! not a frame after a finished one are trailing garbage, skippable frames are skipped. The
//! streaming decoder's window is libzstd's default limit (128 MiB, what `zstd` accepts without
//! `--long=N`/`--memory`); a frame decoded whole needs no window beyond its own bounded output.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

use super::zstd_scan::{ScanError, Scanner, Step};
use super::{corrupt, Codec, CompressError, Inflate, Limits, Output};

/// The largest frame (decoded size bound) decoded whole; `pzstd -3` writes 8 MiB frames.
pub(super) const FRAME_MAX: usize = 16 << 20;
/// Decoding threads at most: each holds up to a frame in and out.
const MAX_WORKERS: usize = 4;

/// The zstd decompressor.
pub(super) struct Zstd {
    mode: Mode,
    /// Frames decoded whole before streaming began.
    apart: u64,
}

enum Mode {
    Frames(Frames),
    Stream(Stream),
}

impl Zstd {
    pub(super) fn new(limits: Limits) -> Result<Self, CompressError> {
        Self::with(limits, FRAME_MAX)
    }

    /// Up to `limits.threads` decoding threads (one means streaming) for frames up to
    /// `frame_max`, as many frames in flight as `limits.memory` holds (one at least).
    pub(super) fn with(limits: Limits, frame_max: usize) -> Result<Self, CompressError> {
        let workers = limits.threads.min(MAX_WORKERS);
        let mode = if workers > 1 {
            Mode::Frames(Frames::new(workers, frame_max, limits.memory))
        } else {
            Mode::Stream(Stream::new(0)?)
        };
        Ok(Zstd { mode, apart: 0 })
    }

    /// Frames decoded whole so far (the rest streamed).
    #[cfg(test)]
    pub(super) fn decoded_apart(&self) -> u64 {
        match &self.mode {
            Mode::Frames(f) => f.decoded,
            Mode::Stream(_) => self.apart,
        }
    }
}

impl Inflate for Zstd {
    fn feed(&mut self, mut input: &[u8], out: &mut Output<'_>) -> Result<(), CompressError> {
        while !input.is_empty() {
            match &mut self.mode {
                Mode::Stream(s) => return s.feed(input, out),
                Mode::Frames(f) => {
                    let (used, step) = f.scan.push(input);
                    input = &input[used..];
                    match step.map_err(|e| f.scan_error(e))? {
                        Step::NeedMore => {}
                        Step::Frame { bytes, bound } => f.submit(bytes, bound, out)?,
                        Step::TooBig(head) => {
                            f.drain(out)?;
                            self.apart = f.decoded;
                            tracing::debug!(
                                apart = f.decoded,
                                "a zstd frame too big to decode whole: streaming the rest"
                            );
                            let mut s = Stream::new(f.scan.frames())?;
                            s.feed(&head, out)?;
                            self.mode = Mode::Stream(s);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Output<'_>) -> Result<(), CompressError> {
        match &mut self.mode {
            Mode::Stream(s) => s.finish(out),
            Mode::Frames(f) => {
                f.drain(out)?;
                match f.scan.ended_cleanly() {
                    Ok(true) => {
                        tracing::info!(
                            frames = f.decoded,
                            threads = f.pool.threads.len(),
                            "zstd frames decoded apart, on several threads"
                        );
                        Ok(())
                    }
                    Ok(false) => Err(CompressError::Truncated(Codec::Zstd)),
                    Err(e) => Err(f.scan_error(e)),
                }
            }
        }
    }
}

/// Frames decoded whole on a pool of threads, handed on in order.
struct Frames {
    scan: Scanner,
    pool: Pool,
    /// Frames being decoded, oldest first.
    pending: VecDeque<(Receiver<Decoded>, u64)>,
    /// Frames in flight at most (each holds its input and its output).
    depth: usize,
    /// Bytes frames in flight may hold (input and decoded bound), and what they hold.
    budget: u64,
    held: u64,
    decoded: u64,
}

impl Frames {
    fn new(workers: usize, frame_max: usize, budget: u64) -> Self {
        Frames {
            scan: Scanner::new(frame_max),
            pool: Pool::new(workers),
            pending: VecDeque::new(),
            depth: workers,
            budget,
            held: 0,
            decoded: 0,
        }
    }

    fn submit(
        &mut self,
        bytes: Vec<u8>,
        bound: usize,
        out: &mut Output<'_>,
    ) -> Result<(), CompressError> {
        // In flight: frames being decoded (input and bound) and decoded frames not yet
        // written; one frame at least, whatever the budget.
        let cost = (bytes.len() + bound) as u64;
        loop {
            let over = self.held + self.pool.buffers.lent() + cost > self.budget;
            if !self.pending.is_empty() && (over || self.pending.len() >= self.depth) {
                self.emit_oldest(out)?;
            } else {
                if over {
                    let room = self.budget.saturating_sub(self.held + cost);
                    self.pool.buffers.wait_until_lent(room);
                }
                break;
            }
        }
        let (tx, rx) = mpsc::sync_channel(1);
        self.pool.send(Job {
            frame: bytes,
            bound,
            reply: tx,
        })?;
        self.pending.push_back((rx, cost));
        self.held += cost;
        Ok(())
    }

    fn emit_oldest(&mut self, out: &mut Output<'_>) -> Result<(), CompressError> {
        let Some((rx, cost)) = self.pending.pop_front() else {
            return Ok(());
        };
        self.held -= cost;
        let done = rx
            .recv()
            .map_err(|_| corrupt(Codec::Zstd, "a frame decoder thread stopped"))?;
        // The frame's buffer walks the next frame in.
        self.scan.recycle(done.frame);
        let decoded = done.result?;
        self.decoded += 1;
        out.put(decoded)?;
        Ok(())
    }

    /// Hands on every frame in flight.
    fn drain(&mut self, out: &mut Output<'_>) -> Result<(), CompressError> {
        while !self.pending.is_empty() {
            self.emit_oldest(out)?;
        }
        Ok(())
    }

    fn scan_error(&self, e: ScanError) -> CompressError {
        match e {
            ScanError::NotAFrame if self.scan.frames() > 0 => {
                CompressError::TrailingGarbage(Codec::Zstd)
            }
            ScanError::NotAFrame => corrupt(Codec::Zstd, "not a zstd frame"),
            ScanError::Corrupt(why) => corrupt(Codec::Zstd, why),
        }
    }
}

/// A frame to decode, with its decoded size bound and where the result goes.
struct Job {
    frame: Vec<u8>,
    bound: usize,
    reply: SyncSender<Decoded>,
}

/// A decoded frame (views of a recycled buffer), and the frame's own buffer, given back.
struct Decoded {
    result: Result<Bytes, CompressError>,
    frame: Vec<u8>,
}

/// Decoded-frame buffers: reused (a frame's buffer comes back when the last view of it is
/// dropped, written to the disk, so a deploy allocates a handful, not one per frame), and
/// counted while lent out, so that decoding waits for the disk rather than outgrow its memory.
#[derive(Default)]
struct Buffers {
    shelf: Mutex<Shelf>,
    returned: Condvar,
}

#[derive(Default)]
struct Shelf {
    free: Vec<Vec<u8>>,
    /// Decoded bytes handed on and not yet given back.
    lent: u64,
}

/// Buffers kept for reuse at most (more than the frames in flight never come back at once).
const KEPT: usize = 2 * MAX_WORKERS + 2;

impl Buffers {
    fn take(&self) -> Vec<u8> {
        self.shelf
            .lock()
            .ok()
            .and_then(|mut s| s.free.pop())
            .unwrap_or_default()
    }

    /// Hands `buf` on as shared views; it comes back here when the last one is dropped.
    fn lend(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        if let Ok(mut s) = self.shelf.lock() {
            s.lent += buf.len() as u64;
        }
        Bytes::from_owner(Lent {
            buf,
            home: Arc::clone(self),
        })
    }

    fn give(&self, mut buf: Vec<u8>) {
        if let Ok(mut s) = self.shelf.lock() {
            s.lent = s.lent.saturating_sub(buf.len() as u64);
            if s.free.len() < KEPT {
                buf.clear();
                s.free.push(buf);
            }
        }
        self.returned.notify_all();
    }

    fn lent(&self) -> u64 {
        self.shelf.lock().map_or(0, |s| s.lent)
    }

    /// Waits until at most `limit` decoded bytes are still out (the disk writer drops them).
    fn wait_until_lent(&self, limit: u64) {
        let Ok(mut s) = self.shelf.lock() else {
            return;
        };
        while s.lent > limit {
            s = match self.returned.wait(s) {
                Ok(s) => s,
                Err(_) => return,
            };
        }
    }
}

/// The owner of a decoded frame's bytes: gives its buffer back when dropped.
struct Lent {
    buf: Vec<u8>,
    home: Arc<Buffers>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.home.give(std::mem::take(&mut self.buf));
    }
}

/// The decoding threads, fed from one queue; they stop when the pool is dropped.
struct Pool {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    buffers: Arc<Buffers>,
}

impl Pool {
    fn new(workers: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let buffers = Arc::new(Buffers::default());
        let threads = (0..workers)
            .filter_map(|i| {
                let rx = Arc::clone(&rx);
                let buffers = Arc::clone(&buffers);
                std::thread::Builder::new()
                    .name(format!("rivet-zstd-{i}"))
                    .spawn(move || work(&rx, &buffers))
                    .ok()
            })
            .collect();
        Pool {
            jobs: Some(tx),
            threads,
            buffers,
        }
    }

    fn send(&self, job: Job) -> Result<(), CompressError> {
        match &self.jobs {
            Some(tx) if !self.threads.is_empty() => tx
                .send(job)
                .map_err(|_| corrupt(Codec::Zstd, "the frame decoder threads stopped")),
            _ => Err(corrupt(Codec::Zstd, "no frame decoder thread could start")),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A decoding thread's body: one frame at a time, each into a buffer of its bound.
fn work(jobs: &Mutex<Receiver<Job>>, buffers: &Arc<Buffers>) {
    let mut dctx: Option<zstd::bulk::Decompressor<'static>> = None;
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(Job {
            frame,
            bound,
            reply,
        }) = job
        else {
            return;
        };
        let mut buf = buffers.take();
        buf.clear();
        buf.reserve(bound);
        let made = match &mut dctx {
            Some(d) => d.decompress_to_buffer(&frame, &mut buf),
            None => zstd::bulk::Decompressor::new()
                .and_then(|d| dctx.insert(d).decompress_to_buffer(&frame, &mut buf)),
        };
        let result = made
            .map(|_| buffers.lend(buf))
            .map_err(|e| corrupt(Codec::Zstd, e));
        let _ = reply.send(Decoded { result, frame });
    }
}

/// libzstd's streaming decoder, which decodes concatenated frames (and skips skippable ones)
/// by itself. What is decided here: a frame left unfinished at the end is a truncation, and
/// bytes that are not a frame after a finished one are trailing garbage.
struct Stream {
    d: Decoder<'static>,
    /// libzstd's last hint: 0 when a frame has just been completed and flushed.
    hint: usize,
    /// Frames completed (those walked before streaming began included).
    frames: u64,
}

impl Stream {
    fn new(frames: u64) -> Result<Self, CompressError> {
        Ok(Stream {
            d: Decoder::new().map_err(|e| corrupt(Codec::Zstd, e))?,
            hint: 1,
            frames,
        })
    }

    fn run(
        &mut self,
        input: &[u8],
        out: &mut Output<'_>,
    ) -> Result<(usize, usize, bool), CompressError> {
        let buf = out.room()?;
        let len0 = buf.len();
        let mut inb = InBuffer::around(input);
        let mut outb = OutBuffer::around_pos(buf, len0);
        let at_boundary = self.hint == 0;
        let hint = self.d.run(&mut inb, &mut outb).map_err(|e| {
            if at_boundary && self.frames > 0 {
                CompressError::TrailingGarbage(Codec::Zstd)
            } else {
                corrupt(Codec::Zstd, e)
            }
        })?;
        let made = outb.pos() - len0;
        let used = inb.pos();
        let full = buf.len() == buf.capacity();
        if hint == 0 && self.hint != 0 {
            self.frames += 1;
        }
        self.hint = hint;
        Ok((used, made, full))
    }

    fn feed(&mut self, mut input: &[u8], out: &mut Output<'_>) -> Result<(), CompressError> {
        while !input.is_empty() {
            let (used, made, full) = self.run(input, out)?;
            input = &input[used..];
            if used == 0 && made == 0 && !full {
                return Err(corrupt(Codec::Zstd, "the decoder makes no progress"));
            }
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Output<'_>) -> Result<(), CompressError> {
        // Output decoded but not yet flushed comes out with an empty input.
        while self.hint != 0 {
            let (_, made, full) = self.run(&[], out)?;
            if made == 0 && !full {
                return Err(CompressError::Truncated(Codec::Zstd));
            }
        }
        Ok(())
    }
}
