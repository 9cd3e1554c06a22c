//! The writer stage: image bytes in order → the target, fast and safely.
//!
//! - The first [`TABLE_AREA`] bytes (partition table, boot code) are held back in memory and
//!   written only by [`DiskWriter::commit`], after the digest matched: until then the disk can't
//!   boot a half or wrong image.
//! - The rest is gathered into page-aligned 4 MiB buffers and written with `O_DIRECT` where the
//!   target allows it. Two threads, double-buffered: this one copies the next buffer while the
//!   I/O thread waits for the device with the previous one, so the device never idles on us.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::device::{Target, TABLE_AREA};
use crate::image::fetch::Progress;

/// Size of one write to the device.
pub const WRITE_SIZE: usize = 4 << 20;
/// Buffers in flight between the copier and the I/O thread.
const BUFFERS: usize = 3;
const ALIGN: usize = 4096;

/// A page-aligned byte buffer (what `O_DIRECT` needs), made without `unsafe`: a slightly larger
/// `Vec` and the aligned window inside it.
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let raw = vec![0u8; len + ALIGN];
        let start = (ALIGN - raw.as_ptr() as usize % ALIGN) % ALIGN;
        AlignedBuf { raw, start }
    }

    fn slice(&self, len: usize) -> &[u8] {
        &self.raw[self.start..self.start + len]
    }

    fn slice_mut(&mut self) -> &mut [u8] {
        let end = self.raw.len() - ALIGN + self.start;
        &mut self.raw[self.start..end]
    }
}

struct Job {
    buf: AlignedBuf,
    len: usize,
    at: u64,
}

/// Streams an image onto a [`Target`].
pub struct DiskWriter {
    target: Arc<Target>,
    progress: Arc<Progress>,
    head: Vec<u8>,
    received: u64,
    cur: Option<AlignedBuf>,
    fill: usize,
    buf_at: u64,
    jobs: Option<SyncSender<Job>>,
    free: Receiver<AlignedBuf>,
    io: Option<JoinHandle<io::Result<()>>>,
}

impl DiskWriter {
    /// Starts a writer (and its I/O thread) on `target`.
    pub fn new(target: Arc<Target>, progress: Arc<Progress>) -> io::Result<Self> {
        let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job>(BUFFERS);
        let (free_tx, free_rx) = mpsc::sync_channel::<AlignedBuf>(BUFFERS);
        for _ in 0..BUFFERS - 1 {
            free_tx
                .send(AlignedBuf::new(WRITE_SIZE))
                .map_err(|_| io::Error::other("buffer pool closed"))?;
        }
        let t = Arc::clone(&target);
        let p = Arc::clone(&progress);
        let io = std::thread::Builder::new()
            .name("rivet-io".into())
            .spawn(move || io_loop(&t, &p, jobs_rx, free_tx))?;
        Ok(DiskWriter {
            target,
            progress,
            head: Vec::with_capacity(TABLE_AREA as usize),
            received: 0,
            cur: Some(AlignedBuf::new(WRITE_SIZE)),
            fill: 0,
            buf_at: TABLE_AREA,
            jobs: Some(jobs_tx),
            free: free_rx,
            io: Some(io),
        })
    }

    /// Bytes of the image received so far.
    pub fn image_len(&self) -> u64 {
        self.received
    }

    /// Appends the next bytes of the image.
    pub fn push(&mut self, mut data: &[u8]) -> io::Result<()> {
        if self.received < TABLE_AREA {
            let take = ((TABLE_AREA - self.received) as usize).min(data.len());
            self.head.extend_from_slice(&data[..take]);
            self.received += take as u64;
            data = &data[take..];
        }
        while !data.is_empty() {
            let buf = match self.cur.as_mut() {
                Some(b) => b,
                None => {
                    let b = self.free.recv().map_err(|_| self.io_failed())?;
                    self.cur.insert(b)
                }
            };
            let take = (WRITE_SIZE - self.fill).min(data.len());
            buf.slice_mut()[self.fill..self.fill + take].copy_from_slice(&data[..take]);
            self.fill += take;
            self.received += take as u64;
            data = &data[take..];
            if self.fill == WRITE_SIZE {
                self.submit()?;
            }
        }
        Ok(())
    }

    /// The image restarts from byte 0.
    pub fn reset(&mut self) {
        self.head.clear();
        self.received = 0;
        self.fill = 0;
        self.buf_at = TABLE_AREA;
    }

    fn submit(&mut self) -> io::Result<()> {
        let Some(buf) = self.cur.take() else {
            return Ok(());
        };
        let job = Job {
            buf,
            len: self.fill,
            at: self.buf_at,
        };
        self.buf_at += self.fill as u64;
        self.fill = 0;
        match &self.jobs {
            Some(tx) => tx.send(job).map_err(|_| self.io_failed()),
            None => Err(io::Error::other("writer already finished")),
        }
    }

    fn io_failed(&mut self) -> io::Error {
        match self.io.take().map(|h| h.join()) {
            Some(Ok(Err(e))) => e,
            _ => io::Error::other("the I/O thread stopped"),
        }
    }

    /// Writes out everything received except the held-back head and waits for the device.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.fill > 0 {
            self.submit()?;
        }
        self.jobs = None;
        match self.io.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the I/O thread panicked")),
            None => Ok(()),
        }
    }

    /// Writes the held-back head (after verification) and flushes the device.
    pub fn commit(mut self) -> io::Result<u64> {
        self.finish()?;
        let sector = self.target.sector_size() as usize;
        let head_len = self.head.len();
        match self.target.direct() {
            Some(d) if head_len.is_multiple_of(sector) && head_len > 0 => {
                let mut b = AlignedBuf::new(head_len);
                b.slice_mut()[..head_len].copy_from_slice(&self.head);
                d.write_all_at(b.slice(head_len), 0)?;
            }
            _ => self.target.file().write_all_at(&self.head, 0)?,
        }
        self.progress.add_written(head_len as u64);
        self.target.sync()?;
        Ok(self.received)
    }
}

impl Drop for DiskWriter {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(h) = self.io.take() {
            let _ = h.join();
        }
    }
}

fn io_loop(
    target: &Target,
    progress: &Progress,
    jobs: Receiver<Job>,
    free: SyncSender<AlignedBuf>,
) -> io::Result<()> {
    let sector = target.sector_size() as usize;
    for job in jobs {
        let data = job.buf.slice(job.len);
        let fd: &File = match target.direct() {
            Some(d) if job.len.is_multiple_of(sector) => d,
            _ => target.file(),
        };
        fd.write_all_at(data, job.at)?;
        progress.add_written(job.len as u64);
        // The copier may have stopped wanting buffers (reset or failure): that's fine.
        let _ = free.try_send(job.buf);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_the_head_until_commit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk");
        std::fs::write(&p, vec![0xAAu8; 12 << 20]).unwrap();
        let t = Arc::new(Target::open(&p, true).unwrap());
        let mut w = DiskWriter::new(Arc::clone(&t), Arc::default()).unwrap();
        let img: Vec<u8> = (0..(9 << 20) + 123).map(|i| (i % 251) as u8).collect();
        for chunk in img.chunks(100_000) {
            w.push(chunk).unwrap();
        }
        w.finish().unwrap();
        let on_disk = std::fs::read(&p).unwrap();
        assert!(
            on_disk[..1 << 20].iter().all(|&b| b == 0xAA),
            "head written early"
        );
        assert_eq!(&on_disk[1 << 20..img.len()], &img[1 << 20..]);
        assert_eq!(w.commit().unwrap(), img.len() as u64);
        let on_disk = std::fs::read(&p).unwrap();
        assert_eq!(&on_disk[..img.len()], &img[..]);
        assert!(on_disk[img.len()..].iter().all(|&b| b == 0xAA));
    }

    #[test]
    fn reset_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk");
        let t = Arc::new(Target::open(&p, false).unwrap());
        let mut w = DiskWriter::new(t, Arc::default()).unwrap();
        w.push(&vec![1u8; 6 << 20]).unwrap();
        w.reset();
        w.push(&vec![2u8; 5 << 20]).unwrap();
        assert_eq!(w.commit().unwrap(), 5 << 20);
        let on_disk = std::fs::read(&p).unwrap();
        assert!(on_disk[..5 << 20].iter().all(|&b| b == 2));
    }
}
