//! A window on one partition's bytes of a disk, for `fatfs` (which wants Read + Write + Seek on
//! the file system's own bytes): the ESP is read ([`super::esp`]) and written
//! ([`super::esp_write`]) through it, never mounted. Offsets are relative to the partition;
//! nothing reads or writes past its end. A read-only window refuses writes, so reading an
//! ESP can never change it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// The byte range `[start, start+len)` of a disk.
pub(crate) struct PartitionWindow {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
    writable: bool,
}

impl PartitionWindow {
    /// A window that refuses writes.
    pub(crate) fn read_only(file: File, start: u64, len: u64) -> Self {
        PartitionWindow {
            file,
            start,
            len,
            pos: 0,
            writable: false,
        }
    }

    /// A window that writes through to `file` (opened read-write).
    pub(crate) fn read_write(file: File, start: u64, len: u64) -> Self {
        PartitionWindow {
            writable: true,
            ..Self::read_only(file, start, len)
        }
    }

    /// How many of `want` bytes fit before the partition's end.
    fn room(&self, want: usize) -> usize {
        let left = self.len.saturating_sub(self.pos);
        usize::try_from(left).unwrap_or(usize::MAX).min(want)
    }
}

impl Read for PartitionWindow {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.room(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for PartitionWindow {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the ESP is opened read-only",
            ));
        }
        let n = self.room(buf.len());
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let put = self.file.write_at(&buf[..n], self.start + self.pos)?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.writable {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

impl Seek for PartitionWindow {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_window_reads_its_range_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        std::fs::write(&p, b"0123456789").unwrap();
        let mut r = PartitionWindow::read_only(File::open(&p).unwrap(), 2, 5);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "23456");
        assert_eq!(r.seek(SeekFrom::End(-1)).unwrap(), 4);
        let mut b = [0u8; 4];
        assert_eq!(r.read(&mut b).unwrap(), 1);
        assert_eq!(b[0], b'6');
        assert!(r.seek(SeekFrom::Current(-10)).is_err());
        let e = r.write(b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(std::fs::read(&p).unwrap(), b"0123456789");
    }

    #[test]
    fn writes_stay_inside_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        std::fs::write(&p, vec![0u8; 64]).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let mut w = PartitionWindow::read_write(file, 16, 8);
        w.seek(SeekFrom::Start(4)).unwrap();
        assert_eq!(w.write(b"abcdefgh").unwrap(), 4, "only what fits");
        let e = w.write(b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero, "nothing past the end");
        let data = std::fs::read(&p).unwrap();
        assert_eq!(&data[20..24], b"abcd");
        assert!(data[..20].iter().chain(&data[24..]).all(|&b| b == 0));
    }
}
