//! The overwrite method (IPA's `shred --force [--zero] --iterations N`): N passes of random
//! data over the whole device, then, if asked, one pass of zeroes.
//!
//! Speed is the point (a full erase of a large disk takes hours), so the random pass runs at
//! the device's sequential write speed:
//! - The random data is AES-128-CTR keystream from aws-lc-rs (a fresh random key per pass,
//!   the counter = the byte offset / 16, so no two blocks repeat). Measured here
//!   (`examples/erase_rng_speed.rs`, one core): AES-128-CTR 4.6 GB/s, rand_chacha ChaCha8
//!   2.6 GB/s and ChaCha12 1.8 GB/s in release builds; in debug builds ChaCha drops to
//!   10 MB/s while aws-lc (C and assembly) stays at 4.6 GB/s.
//! - Generation runs on two threads of its own (alternate chunks), ahead of the writers,
//!   through a ring of six 4 MiB page-aligned buffers (no copies: the keystream is XORed in place over the buffer's
//!   previous contents, which keeps it pseudorandom and saves clearing it).
//! - Writes are O_DIRECT `pwrite`s of 4 MiB (what `dd bs=4M oflag=direct` does), from two
//!   writer threads, so one write is queued while the other completes (dd keeps one in
//!   flight; a device idles between its writes), with one `fdatasync` at the end of each
//!   pass to flush the device's write cache.
//! - The zero pass uses BLKZEROOUT when the device offloads it (`write_zeroes_max_bytes` >
//!   0: Write Zeroes / WRITE SAME; the kernel guarantees zeroes), in 1 GiB steps so progress
//!   and cancellation still work; otherwise O_DIRECT writes of one shared zeroed buffer,
//!   from two threads as well.
//!
//! Progress is a byte counter shared with the caller; cancellation is checked between
//! writes.

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_128};
use aws_lc_rs::iv::FixedLength;

use super::device::Disk;
use super::error::DeviceError;
use super::kernel::{self, QueueLimits};

/// Size of one write (and of each ring buffer).
pub(crate) const CHUNK: usize = 4 << 20;
/// Writes in flight at once (dd has one; two keep the device busy while a thread waits).
const WRITERS: usize = 2;
/// Threads generating random data (AES-CTR runs at ~4.6 GB/s per core: one thread could
/// cap a fast NVMe drive, or fall behind when other work shares the cores).
const GENERATORS: usize = 2;
const RING: usize = WRITERS + GENERATORS + 2;
const ALIGN: usize = 4096;
const ZEROOUT_STEP: u64 = 1 << 30;

/// How the zero pass is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZeroMethod {
    /// BLKZEROOUT when the device offloads it, else O_DIRECT writes.
    #[default]
    Auto,
    /// Always O_DIRECT writes of zeroes (what `dd if=/dev/zero` does).
    Write,
}

/// Shared progress of an erase: bytes written (or zeroed) so far, out of a total, and a flag
/// the caller sets to stop (IPA's erase steps are `abortable`).
#[derive(Debug, Default)]
pub struct EraseProgress {
    /// Bytes done, over all devices and passes.
    pub done: AtomicU64,
    /// Bytes to do, over all devices and passes.
    pub total: AtomicU64,
    /// Set to stop between two writes; the erase then fails with "cancelled".
    pub cancel: AtomicBool,
}

/// The passes of one overwrite.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Random passes (`agent_erase_devices_iterations`).
    pub random_passes: u32,
    /// A final pass of zeroes (`agent_erase_devices_zeroize`).
    pub zeroize: bool,
    /// How to zero.
    pub zero: ZeroMethod,
}

impl Plan {
    /// Bytes this plan writes over a device of `size` bytes.
    pub(super) fn bytes(&self, size: u64) -> u64 {
        size * (u64::from(self.random_passes) + u64::from(self.zeroize))
    }
}

/// A page-aligned buffer: an over-allocated `Vec` and the aligned window into it (O_DIRECT
/// needs the memory aligned, and this needs no `unsafe`).
struct AlignedBuf {
    raw: Vec<u8>,
    off: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + ALIGN];
        let off = raw.as_ptr().align_offset(ALIGN);
        AlignedBuf { raw, off }
    }

    fn get(&self, len: usize) -> &[u8] {
        &self.raw[self.off..self.off + len]
    }

    fn get_mut(&mut self, len: usize) -> &mut [u8] {
        &mut self.raw[self.off..self.off + len]
    }
}

/// The keystream of one pass: a fresh random key; the counter block of offset `o` is o/16.
pub(crate) struct Keystream(EncryptingKey);

impl Keystream {
    pub(crate) fn new() -> std::io::Result<Keystream> {
        let mut key = [0u8; 16];
        aws_lc_rs::rand::fill(&mut key)
            .map_err(|_| std::io::Error::other("no system randomness"))?;
        Self::with_key(&key)
    }

    pub(crate) fn with_key(key: &[u8; 16]) -> std::io::Result<Keystream> {
        let bad = |_| std::io::Error::other("AES-128-CTR key set-up failed");
        let k = UnboundCipherKey::new(&AES_128, key).map_err(bad)?;
        Ok(Keystream(EncryptingKey::ctr(k).map_err(bad)?))
    }

    /// XORs the keystream for device offset `offset` (a multiple of 16) into `buf`.
    pub(crate) fn apply(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let iv = u128::from(offset / 16).to_be_bytes();
        self.0
            .less_safe_encrypt(buf, EncryptionContext::Iv128(FixedLength::from(iv)))
            .map(|_| ())
            .map_err(|_| std::io::Error::other("AES-128-CTR failed"))
    }
}

fn cancelled(disk: &Disk) -> DeviceError {
    DeviceError::other(disk.path(), "erasing", "cancelled")
}

fn pwrite_all(f: &File, mut buf: &[u8], mut off: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::pwrite(f, buf, off) {
            Ok(0) => return Err(std::io::Error::from_raw_os_error(libc::ENOSPC)),
            Ok(n) => {
                buf = &buf[n..];
                off += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The chunks of a pass: `(offset, length)`, the last one shorter.
fn chunks(size: u64) -> impl Iterator<Item = (u64, usize)> {
    (0..size.div_ceil(CHUNK as u64)).map(move |i| {
        let off = i * CHUNK as u64;
        (off, (size - off).min(CHUNK as u64) as usize)
    })
}

/// Runs the plan over the whole device.
pub(crate) fn overwrite(
    disk: &Disk,
    plan: Plan,
    progress: &EraseProgress,
) -> Result<(), DeviceError> {
    let direct = disk.open_direct()?;
    for pass in 0..plan.random_passes {
        tracing::info!(device = %disk.path().display(), pass = pass + 1, of = plan.random_passes, "random pass");
        random_pass(disk, &direct, progress)?;
        sync(disk, &direct)?;
    }
    if plan.zeroize {
        let limits = QueueLimits::read(&disk.info.sysfs);
        if plan.zero == ZeroMethod::Auto && limits.zeroout_offloaded() {
            tracing::info!(device = %disk.path().display(), "zero pass (BLKZEROOUT, offloaded)");
            zeroout_pass(disk, progress)?;
        } else {
            tracing::info!(device = %disk.path().display(), "zero pass (O_DIRECT writes)");
            zero_write_pass(disk, &direct, progress)?;
        }
        sync(disk, &direct)?;
    }
    Ok(())
}

fn sync(disk: &Disk, direct: &File) -> Result<(), DeviceError> {
    direct
        .sync_data()
        .map_err(|e| DeviceError::new(disk.path(), "flushing", e))
}

/// One pass of random data: `GENERATORS` threads fill buffers, `WRITERS` threads write them.
fn random_pass(disk: &Disk, direct: &File, progress: &EraseProgress) -> Result<(), DeviceError> {
    let stream = Keystream::new().map_err(|e| DeviceError::new(disk.path(), "keying", e))?;
    // Capacity RING each: the generators hold at most the RING buffers, so their sends never
    // block, and they end once every writer has dropped its end of `free`.
    let (free_tx, free_rx) = sync_channel::<AlignedBuf>(RING);
    let (full_tx, full_rx) = sync_channel::<(u64, usize, AlignedBuf)>(RING);
    for _ in 0..RING {
        // Cannot fail: the channel has room for RING buffers and its receiver is alive.
        let _ = free_tx.send(AlignedBuf::new(CHUNK));
    }
    let full_rx = Mutex::new(full_rx);
    let free_rx = Mutex::new(free_rx);
    let stop = AtomicBool::new(false);
    let size = disk.size;
    std::thread::scope(|s| {
        let generators: Vec<_> = (0..GENERATORS)
            .map(|k| {
                let (stream, free, full) = (&stream, &free_rx, full_tx.clone());
                s.spawn(move || generate(stream, size, k, free, full))
            })
            .collect();
        drop(full_tx);
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                let free = free_tx.clone();
                let (full, stop) = (&full_rx, &stop);
                s.spawn(move || write_filled(disk, direct, progress, full, free, stop))
            })
            .collect();
        drop(free_tx);
        let mut result = Ok(());
        for w in writers {
            let r = w.join().unwrap_or_else(|_| {
                Err(DeviceError::other(
                    disk.path(),
                    "writing",
                    "writer thread panicked",
                ))
            });
            if result.is_ok() {
                result = r;
            }
        }
        for g in generators {
            let r = g
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("generator thread panicked")))
                .map_err(|e| DeviceError::new(disk.path(), "generating random data for", e));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

/// Generator `k` of `GENERATORS` fills every GENERATORS-th chunk, starting at chunk `k`.
fn generate(
    stream: &Keystream,
    size: u64,
    k: usize,
    free: &Mutex<Receiver<AlignedBuf>>,
    full: SyncSender<(u64, usize, AlignedBuf)>,
) -> std::io::Result<()> {
    for (off, len) in chunks(size).skip(k).step_by(GENERATORS) {
        let next = match free.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return Err(std::io::Error::other("generator lock poisoned")),
        };
        let Ok(mut buf) = next else {
            return Ok(()); // the writers stopped; they report why
        };
        stream.apply(buf.get_mut(len), off)?;
        if full.send((off, len, buf)).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// One writer: takes filled buffers until the generator is done or something failed.
fn write_filled(
    disk: &Disk,
    direct: &File,
    progress: &EraseProgress,
    full: &Mutex<Receiver<(u64, usize, AlignedBuf)>>,
    free: SyncSender<AlignedBuf>,
    stop: &AtomicBool,
) -> Result<(), DeviceError> {
    let fail = |e: DeviceError| {
        stop.store(true, Ordering::Relaxed);
        Err(e)
    };
    while !stop.load(Ordering::Relaxed) {
        let next = match full.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => {
                return fail(DeviceError::other(
                    disk.path(),
                    "writing",
                    "writer lock poisoned",
                ))
            }
        };
        // Also the end when the generator failed early: its own error says why.
        let Ok((off, len, buf)) = next else { break };
        if progress.cancel.load(Ordering::Relaxed) {
            return fail(cancelled(disk));
        }
        if let Err(e) = pwrite_all(direct, buf.get(len), off) {
            return fail(DeviceError::new(
                disk.path(),
                format!("writing random data at byte {off} of"),
                e,
            ));
        }
        progress.done.fetch_add(len as u64, Ordering::Relaxed);
        let _ = free.send(buf);
    }
    Ok(())
}

/// The zero pass by writes: `WRITERS` threads write one shared zeroed buffer.
fn zero_write_pass(
    disk: &Disk,
    direct: &File,
    progress: &EraseProgress,
) -> Result<(), DeviceError> {
    let zeros = AlignedBuf::new(CHUNK);
    let all: Vec<(u64, usize)> = chunks(disk.size).collect();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let writer = || -> Result<(), DeviceError> {
        while !stop.load(Ordering::Relaxed) {
            let Some(&(off, len)) = all.get(next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            let r = if progress.cancel.load(Ordering::Relaxed) {
                Err(cancelled(disk))
            } else {
                pwrite_all(direct, zeros.get(len), off).map_err(|e| {
                    DeviceError::new(disk.path(), format!("writing zeroes at byte {off} of"), e)
                })
            };
            if r.is_err() {
                stop.store(true, Ordering::Relaxed);
                return r;
            }
            progress.done.fetch_add(len as u64, Ordering::Relaxed);
        }
        Ok(())
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS).map(|_| s.spawn(writer)).collect();
        handles.into_iter().try_for_each(|h| {
            h.join().unwrap_or_else(|_| {
                Err(DeviceError::other(
                    disk.path(),
                    "writing",
                    "writer thread panicked",
                ))
            })
        })
    })
}

fn zeroout_pass(disk: &Disk, progress: &EraseProgress) -> Result<(), DeviceError> {
    let mut off = 0;
    while off < disk.size {
        if progress.cancel.load(Ordering::Relaxed) {
            return Err(cancelled(disk));
        }
        let len = (disk.size - off).min(ZEROOUT_STEP);
        kernel::zero_out(&disk.file, off, len).map_err(|e| {
            DeviceError::new(disk.path(), format!("BLKZEROOUT at byte {off} of"), e)
        })?;
        progress.done.fetch_add(len, Ordering::Relaxed);
        off += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_device_exactly() {
        let size = 3 * CHUNK as u64 + 4096;
        let c: Vec<_> = chunks(size).collect();
        assert_eq!(c.len(), 4);
        assert_eq!(c[3], (3 * CHUNK as u64, 4096));
        assert_eq!(c.iter().map(|(_, l)| *l as u64).sum::<u64>(), size);
        assert_eq!(chunks(0).count(), 0);
    }

    #[test]
    fn buffers_are_page_aligned() {
        let mut b = AlignedBuf::new(CHUNK);
        assert_eq!(b.get_mut(CHUNK).as_ptr() as usize % ALIGN, 0);
    }

    #[test]
    fn keystream_is_seekable_and_differs_per_key() {
        let a = Keystream::with_key(&[1; 16]).unwrap();
        // One 64 KiB stretch from offset 0 equals two 32 KiB stretches generated separately.
        let mut whole = vec![0u8; 64 << 10];
        a.apply(&mut whole, 0).unwrap();
        let mut second = vec![0u8; 32 << 10];
        a.apply(&mut second, 32 << 10).unwrap();
        assert_eq!(&whole[32 << 10..], &second[..]);
        assert_ne!(&whole[..32 << 10], &second[..]);
        let b = Keystream::with_key(&[2; 16]).unwrap();
        let mut other = vec![0u8; 64 << 10];
        b.apply(&mut other, 0).unwrap();
        assert_ne!(whole, other);
        // Looks random: every byte value appears, about 1/256 of them zero.
        let zeros = whole.iter().filter(|&&x| x == 0).count();
        assert!((100..420).contains(&zeros), "{zeros} zero bytes in 64 KiB");
    }

    #[test]
    fn plan_counts_bytes() {
        let p = Plan {
            random_passes: 2,
            zeroize: true,
            zero: ZeroMethod::Auto,
        };
        assert_eq!(p.bytes(10), 30);
    }
}
