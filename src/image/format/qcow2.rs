//! qcow2 → raw in one pass, while the image downloads: no temporary copy, no random access.
//!
//! Written by hand because no crate reads qcow2 as a *stream*: they all seek. It works because
//! `qemu-img convert` (and most image builders) lay a qcow2 file out as: header (cluster 0),
//! refcount table, refcount block, L1 table, then every L2 table before the data clusters it
//! maps. So, reading front to back:
//! 1. the header is parsed and policed (v2/v3 only; no backing file, external data file,
//!    encryption, extended L2, unknown incompatible bits; sane sizes);
//! 2. when the stream reaches the L1 table we learn where every L2 table lives;
//! 3. when it reaches an L2 table we learn where each data cluster goes (host → guest);
//! 4. each data cluster is written at its guest offset as it arrives (zlib/zstd clusters are
//!    inflated, never beyond one cluster);
//! 5. bytes whose meaning is not known yet (a data cluster before its L2 table) go to a bounded
//!    spill and are replayed when the L2 table arrives; past the budget, the caller falls back
//!    to the temp-file path;
//! 6. at the end, every guest range nothing was written to is reported, to be zeroed.
//!
//! Nothing here follows a path or offset stored in the image outside the image itself.

use std::collections::BTreeMap;
use std::io;

/// Where guest (virtual disk) bytes go.
pub(crate) trait GuestSink {
    /// Writes `data` at guest offset `off`.
    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()>;
}

/// Why a qcow2 stream could not be converted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Qcow2Error {
    /// The image is unsafe or malformed (IPA: `Security: Image failed safety check`).
    #[error("{0}")]
    Unsafe(String),
    /// The layout needs random access beyond the spill budget: use the temp-file path.
    #[error("the qcow2 layout cannot be streamed: {0}")]
    NeedsFallback(String),
    /// The stream ended before every mapped cluster arrived.
    #[error("the qcow2 image is truncated: {0}")]
    Truncated(String),
    /// Writing to the target failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn unsafe_(msg: impl Into<String>) -> Qcow2Error {
    Qcow2Error::Unsafe(msg.into())
}

mod header;
pub(crate) use header::{Header, HEADER_PEEK};

const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COMPRESSED: u64 = 1 << 62;
/// Most mappings held at once (about 60 MiB at worst).
const MAX_OBJECTS: usize = 1 << 20;

/// What a host range of the file holds.
#[derive(Debug, Clone)]
enum Obj {
    /// Metadata to skip (header, refcount table or blocks).
    Skip,
    /// The L1 table.
    L1,
    /// The refcount table (its blocks are skipped, not spilled).
    RefTable,
    /// An L2 table mapping guest clusters from `guest`.
    L2 { guest: u64 },
    /// A data cluster for `guest`.
    Data { guest: u64 },
    /// A compressed cluster for `guest`, at most `len` bytes from the start.
    Compressed { guest: u64 },
}

/// The streaming converter.
pub(crate) struct Qcow2Stream {
    hdr: Header,
    pos: u64,
    /// Host offset → (end, what), for everything known and not yet passed.
    objs: BTreeMap<u64, (u64, Obj)>,
    /// Bytes of metadata being gathered (L1, L2), or of a compressed cluster, by start.
    gather: BTreeMap<u64, Vec<u8>>,
    /// Bytes seen before their meaning was known, by host offset.
    spill: BTreeMap<u64, Vec<u8>>,
    spill_bytes: usize,
    budget: usize,
    /// L2 tables not yet parsed (once zero and L1 parsed, unknown bytes are junk).
    l2_pending: usize,
    l1_done: bool,
    /// Guest ranges written, start → end (merged).
    written: BTreeMap<u64, u64>,
    /// The longest object known: how far back a byte may belong to one still gathering.
    max_obj_len: u64,
    /// Compressed clusters waiting to be inflated, and their weight in memory.
    pending: Vec<(u64, Vec<u8>)>,
    pending_bytes: usize,
}

impl Qcow2Stream {
    /// Starts a conversion. `head` holds at least the header cluster's first bytes; `budget`
    /// bounds the spill (bytes).
    pub(crate) fn new(head: &[u8], budget: usize) -> Result<Qcow2Stream, Qcow2Error> {
        let hdr = Header::parse(head)?;
        if hdr.nb_snapshots > 0 {
            return Err(Qcow2Error::NeedsFallback(
                "the image has internal snapshots".into(),
            ));
        }
        let c = hdr.cluster();
        let mut objs = BTreeMap::new();
        objs.insert(0, (c, Obj::Skip));
        // Tables fill whole clusters; the padding after the last entry is theirs too. The
        // offsets are untrusted: beyond the 56-bit range qcow2 allows they are refused.
        if hdr.l1_offset > L2_OFFSET_MASK || hdr.refcount_offset > L2_OFFSET_MASK {
            return Err(unsafe_("qcow2 table offsets out of range"));
        }
        let l1_bytes = u64::from(hdr.l1_size) * 8;
        let rt_bytes = u64::from(hdr.refcount_clusters) * c;
        // Tables are gathered whole in memory: bound them (qemu's own limits are 32/8 MiB).
        if l1_bytes > 32 << 20 || rt_bytes > 8 << 20 {
            return Err(Qcow2Error::NeedsFallback(
                "the qcow2 tables are too large to stream".into(),
            ));
        }
        let l1_end = (hdr.l1_offset + l1_bytes).div_ceil(c) * c;
        if !hdr.l1_offset.is_multiple_of(c) || hdr.l1_offset == 0 {
            return Err(unsafe_("qcow2 L1 table is misplaced"));
        }
        let rt_end = hdr.refcount_offset + rt_bytes;
        let mut s = Qcow2Stream {
            hdr,
            pos: 0,
            objs,
            gather: BTreeMap::new(),
            spill: BTreeMap::new(),
            spill_bytes: 0,
            budget,
            l2_pending: 0,
            l1_done: false,
            written: BTreeMap::new(),
            max_obj_len: 0,
            pending: Vec::new(),
            pending_bytes: 0,
        };
        s.add_obj(s.hdr.l1_offset, l1_end, Obj::L1)?;
        if s.hdr.refcount_offset > 0 {
            s.add_obj(s.hdr.refcount_offset, rt_end, Obj::RefTable)?;
        }
        Ok(s)
    }

    /// The parsed header.
    pub(crate) fn header(&self) -> &Header {
        &self.hdr
    }

    fn add_obj(&mut self, start: u64, end: u64, obj: Obj) -> Result<(), Qcow2Error> {
        // Mappings live until their bytes pass; bound them (~60 bytes each) so memory stays
        // small whatever the image claims. Past this, qemu-img does the job.
        if self.objs.contains_key(&start) {
            return Err(unsafe_(format!(
                "two qcow2 structures start at host offset {start:#x}"
            )));
        }
        if self.objs.len() >= MAX_OBJECTS {
            return Err(Qcow2Error::NeedsFallback(format!(
                "more than {MAX_OBJECTS} clusters are mapped ahead of the stream"
            )));
        }
        // Overlap with something already known means a crafted image.
        if let Some((&s, &(e, _))) = self.objs.range(..end).next_back() {
            if e > start && !matches!(obj, Obj::Compressed { .. }) {
                return Err(unsafe_(format!(
                    "qcow2 structures overlap at host offset {start:#x} (with {s:#x}..{e:#x})"
                )));
            }
        }
        self.max_obj_len = self.max_obj_len.max(end.saturating_sub(start));
        self.objs.insert(start, (end, obj));
        Ok(())
    }

    /// Feeds the next bytes of the file.
    pub(crate) fn feed(&mut self, data: &[u8], sink: &mut dyn GuestSink) -> Result<(), Qcow2Error> {
        let start = self.pos;
        self.deliver(start, data, sink, true)
    }

    /// Routes bytes at host offset `at` to whatever they belong to. `live`: from the stream
    /// (unknown bytes may spill) rather than replayed from the spill.
    fn deliver(
        &mut self,
        at: u64,
        data: &[u8],
        sink: &mut dyn GuestSink,
        live: bool,
    ) -> Result<(), Qcow2Error> {
        let end = at + data.len() as u64;
        // Compressed clusters are at most a cluster and a sector long and may share their last
        // sector with the next one, so several objects can cover the same byte.
        let reach = (self.hdr.cluster() + 1024).max(self.max_obj_len);
        let mut cur = at;
        while cur < end {
            let covering: Vec<(u64, u64, Obj)> = self
                .objs
                .range(cur.saturating_sub(reach)..=cur)
                .filter(|(_, (e, _))| *e > cur)
                .map(|(&s, (e, o))| (s, *e, o.clone()))
                .collect();
            let next_start = self
                .objs
                .range(cur + 1..)
                .next()
                .map(|(&s, _)| s)
                .unwrap_or(u64::MAX);
            let seg_end = covering
                .iter()
                .map(|(_, e, _)| *e)
                .fold(end.min(next_start), u64::min);
            let slice = &data[(cur - at) as usize..(seg_end - at) as usize];
            if live {
                // Everything before seg_end has now been seen (tables parsed at the end of
                // this segment judge "before" and "after" by it).
                self.pos = seg_end;
            }
            if covering.is_empty() {
                if live {
                    self.unknown(cur, slice)?;
                }
            } else {
                for (s, e, obj) in covering {
                    self.take(s, e, obj, cur, slice, sink)?;
                }
            }
            cur = seg_end;
        }
        Ok(())
    }

    fn unknown(&mut self, at: u64, data: &[u8]) -> Result<(), Qcow2Error> {
        if self.l1_done && self.l2_pending == 0 {
            return Ok(()); // every mapping is known: this is unreferenced space
        }
        self.spill_bytes += data.len();
        if self.spill_bytes > self.budget {
            return Err(Qcow2Error::NeedsFallback(format!(
                "more than {} bytes arrived before the tables that map them",
                self.budget
            )));
        }
        match self.spill.range_mut(..=at).next_back() {
            Some((&s, v)) if s + v.len() as u64 == at => v.extend_from_slice(data),
            _ => {
                self.spill.insert(at, data.to_vec());
            }
        }
        Ok(())
    }

    fn take(
        &mut self,
        s: u64,
        e: u64,
        obj: Obj,
        at: u64,
        data: &[u8],
        sink: &mut dyn GuestSink,
    ) -> Result<(), Qcow2Error> {
        match obj {
            Obj::Skip => {}
            Obj::Data { guest } => {
                let g = guest + (at - s);
                let vs = self.hdr.virtual_size;
                if g < vs {
                    let n = ((vs - g) as usize).min(data.len());
                    sink.write_at(g, &data[..n])?;
                    self.mark(g, g + n as u64);
                }
                if at + data.len() as u64 >= e {
                    self.objs.remove(&s);
                }
            }
            Obj::L1 | Obj::RefTable | Obj::L2 { .. } | Obj::Compressed { .. } => {
                let buf = self.gather.entry(s).or_default();
                if s + buf.len() as u64 != at {
                    return Err(unsafe_("qcow2 bytes out of order"));
                }
                buf.extend_from_slice(data);
                if at + data.len() as u64 >= e {
                    let buf = self.gather.remove(&s).unwrap_or_default();
                    self.objs.remove(&s);
                    match obj {
                        Obj::L1 => self.parse_l1(&buf, sink)?,
                        Obj::RefTable => self.parse_refcount_table(&buf),
                        Obj::L2 { guest } => self.parse_l2(guest, &buf, sink)?,
                        Obj::Compressed { guest, .. } => self.inflate(guest, buf, sink)?,
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    fn mark(&mut self, start: u64, end: u64) {
        let (mut s, mut e) = (start, end);
        if let Some((&ps, &pe)) = self.written.range(..=s).next_back() {
            if pe >= s {
                s = ps;
                e = e.max(pe);
            }
        }
        while let Some((&ns, &ne)) = self.written.range(s..).next() {
            if ns > e {
                break;
            }
            e = e.max(ne);
            self.written.remove(&ns);
        }
        self.written.insert(s, e);
    }

    fn parse_refcount_table(&mut self, buf: &[u8]) {
        let c = self.hdr.cluster();
        for e in buf.chunks_exact(8) {
            let off = u64::from_be_bytes(e.try_into().unwrap_or([0; 8])) & L2_OFFSET_MASK;
            // Blocks already passed were spilled; ones that overlap anything are ignored.
            if off >= self.pos && off.is_multiple_of(c) && !self.objs.contains_key(&off) {
                let _ = self.add_obj(off, off + c, Obj::Skip);
            }
        }
    }

    fn parse_l1(&mut self, buf: &[u8], sink: &mut dyn GuestSink) -> Result<(), Qcow2Error> {
        let c = self.hdr.cluster();
        let per_l2 = c / 8;
        let entries = buf.len().min(self.hdr.l1_size as usize * 8);
        for (i, e) in buf[..entries].chunks_exact(8).enumerate() {
            let raw = u64::from_be_bytes(e.try_into().map_err(|_| unsafe_("L1 entry"))?);
            let off = raw & L2_OFFSET_MASK;
            if off == 0 {
                continue;
            }
            if !off.is_multiple_of(c) {
                return Err(unsafe_(format!(
                    "qcow2 L2 table at unaligned offset {off:#x}"
                )));
            }
            let guest = i as u64 * per_l2 * c;
            if guest >= self.hdr.virtual_size {
                return Err(unsafe_("qcow2 L1 entry beyond the virtual size"));
            }
            if off < self.pos {
                return Err(Qcow2Error::NeedsFallback(format!(
                    "L2 table at {off:#x} comes before its L1 table"
                )));
            }
            self.add_obj(off, off + c, Obj::L2 { guest })?;
            self.l2_pending += 1;
            self.replay(off, off + c, sink)?;
        }
        self.l1_done = true;
        self.drop_spill_if_done();
        Ok(())
    }

    fn parse_l2(
        &mut self,
        guest0: u64,
        buf: &[u8],
        sink: &mut dyn GuestSink,
    ) -> Result<(), Qcow2Error> {
        self.l2_pending = self.l2_pending.saturating_sub(1);
        let c = self.hdr.cluster();
        let cb = self.hdr.cluster_bits;
        for (i, e) in buf.chunks_exact(8).enumerate() {
            let raw = u64::from_be_bytes(e.try_into().map_err(|_| unsafe_("L2 entry"))?);
            let guest = guest0 + i as u64 * c;
            if raw & COMPRESSED != 0 {
                let x = 62 - (cb - 8);
                let off = raw & ((1u64 << x) - 1);
                let sectors = (raw & !COMPRESSED & !(1 << 63)) >> x;
                let len = (sectors + 1) * 512 - (off & 511);
                if guest >= self.hdr.virtual_size || off < c {
                    return Err(unsafe_("qcow2 compressed cluster out of range"));
                }
                if off < self.pos && !self.spill_covers(off) {
                    return Err(Qcow2Error::NeedsFallback(format!(
                        "compressed cluster at {off:#x} came before its L2 table and was not kept"
                    )));
                }
                self.add_obj(off, off + len, Obj::Compressed { guest })?;
                self.replay(off, off + len, sink)?;
            } else {
                let off = raw & L2_OFFSET_MASK;
                if off == 0 || (self.hdr.version == 3 && raw & 1 != 0) {
                    continue; // unallocated or zero cluster: zeros at the end
                }
                if !off.is_multiple_of(c) || guest >= self.hdr.virtual_size {
                    return Err(unsafe_(format!(
                        "qcow2 data cluster entry {raw:#x} is invalid"
                    )));
                }
                if off < self.pos && !self.spill_covers(off) {
                    return Err(Qcow2Error::NeedsFallback(format!(
                        "data cluster at {off:#x} came before its L2 table and was not kept"
                    )));
                }
                self.add_obj(off, off + c, Obj::Data { guest })?;
                self.replay(off, off + c, sink)?;
            }
        }
        self.drop_spill_if_done();
        Ok(())
    }

    fn spill_covers(&self, off: u64) -> bool {
        self.spill
            .range(..=off)
            .next_back()
            .is_some_and(|(&s, v)| s + v.len() as u64 > off)
    }

    /// Re-delivers spilled bytes in `[start, end)` to the object just learnt.
    fn replay(&mut self, start: u64, end: u64, sink: &mut dyn GuestSink) -> Result<(), Qcow2Error> {
        let keys: Vec<u64> = self
            .spill
            .range(..end)
            .filter(|(&s, v)| s + v.len() as u64 > start)
            .map(|(&s, _)| s)
            .collect();
        for k in keys {
            let Some(v) = self.spill.get(&k) else {
                continue;
            };
            let from = start.max(k);
            let to = end.min(k + v.len() as u64);
            let piece = v[(from - k) as usize..(to - k) as usize].to_vec();
            self.deliver(from, &piece, sink, false)?;
        }
        Ok(())
    }

    fn drop_spill_if_done(&mut self) {
        if self.l1_done && self.l2_pending == 0 && !self.spill.is_empty() {
            // Everything mapped has been replayed; the rest is unreferenced.
            self.spill.clear();
        }
    }

    /// Queues a compressed cluster; batches are inflated on two threads, since inflating
    /// is the slowest stage of a compressed image (one zlib stream per cluster).
    fn inflate(
        &mut self,
        guest: u64,
        buf: Vec<u8>,
        sink: &mut dyn GuestSink,
    ) -> Result<(), Qcow2Error> {
        self.pending_bytes += buf.len() + self.hdr.cluster() as usize;
        self.pending.push((guest, buf));
        if self.pending.len() >= 64 || self.pending_bytes >= 8 << 20 {
            self.flush_pending(sink)?;
        }
        Ok(())
    }

    /// Inflates the queued clusters (half on a helper thread) and writes them.
    fn flush_pending(&mut self, sink: &mut dyn GuestSink) -> Result<(), Qcow2Error> {
        let batch = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        if batch.is_empty() {
            return Ok(());
        }
        let (c, zstd) = (self.hdr.cluster() as usize, self.hdr.zstd);
        let (first, second) = batch.split_at(batch.len() / 2);
        let inflate_all = |part: &[(u64, Vec<u8>)]| -> Vec<Result<Vec<u8>, Qcow2Error>> {
            part.iter().map(|(_, b)| inflate_one(zstd, c, b)).collect()
        };
        let (a, b) = std::thread::scope(|scope| {
            let helper = scope.spawn(|| inflate_all(first));
            let b = inflate_all(second);
            (helper.join(), b)
        });
        let a = a.map_err(|_| unsafe_("qcow2 inflate thread panicked"))?;
        let vs = self.hdr.virtual_size;
        for ((guest, _), out) in batch.iter().zip(a.into_iter().chain(b)) {
            let out = out?;
            let n = out.len().min((vs - guest) as usize);
            sink.write_at(*guest, &out[..n])?;
            self.mark(*guest, guest + n as u64);
        }
        Ok(())
    }

    /// Ends the stream: writes what is still queued, then checks that every mapped cluster
    /// arrived. Returns the guest ranges that nothing was written to (to be zeroed), in order.
    pub(crate) fn finish(
        mut self,
        sink: &mut dyn GuestSink,
    ) -> Result<Vec<(u64, u64)>, Qcow2Error> {
        self.flush_pending(sink)?;
        self.finish_tables()
    }

    fn finish_tables(self) -> Result<Vec<(u64, u64)>, Qcow2Error> {
        if !self.l1_done {
            return Err(Qcow2Error::Truncated("the L1 table never arrived".into()));
        }
        if let Some((s, (_, obj))) = self.objs.iter().find(|(_, (_, o))| !matches!(o, Obj::Skip)) {
            return Err(Qcow2Error::Truncated(format!(
                "{obj:?} at host offset {s:#x} never arrived (stream ended at {:#x})",
                self.pos
            )));
        }
        let mut holes = Vec::new();
        let mut cur = 0;
        for (&s, &e) in &self.written {
            if s > cur {
                holes.push((cur, s));
            }
            cur = cur.max(e);
        }
        if cur < self.hdr.virtual_size {
            holes.push((cur, self.hdr.virtual_size));
        }
        Ok(holes)
    }
}

#[cfg(test)]
mod tests;

/// Inflates one compressed cluster (zlib as raw deflate, or zstd) into at most one cluster.
fn inflate_one(zstd: bool, c: usize, buf: &[u8]) -> Result<Vec<u8>, Qcow2Error> {
    if zstd {
        let mut out = vec![0u8; c];
        let mut d = zstd::bulk::Decompressor::new().map_err(Qcow2Error::Io)?;
        // The stored length is rounded up to sectors: trailing bytes after the frame are
        // ignored by decoding a single frame.
        let frame = zstd::zstd_safe::find_frame_compressed_size(buf)
            .map_err(|_| unsafe_("qcow2 zstd cluster is corrupt"))?;
        let n = d
            .decompress_to_buffer(&buf[..frame.min(buf.len())], &mut out)
            .map_err(|_| {
                unsafe_("qcow2 compressed cluster inflates beyond a cluster or is corrupt")
            })?;
        out.truncate(n);
        return Ok(out);
    }
    // One byte of room past the cluster: if the stream fills it, it inflates beyond a cluster
    // (a decompression bomb), whatever the decoder says about its state.
    let mut out = vec![0u8; c + 1];
    let mut d = flate2::Decompress::new(false);
    let st = d.decompress(buf, &mut out, flate2::FlushDecompress::Finish);
    let n = d.total_out() as usize;
    if n > c {
        return Err(unsafe_(
            "qcow2 compressed cluster inflates beyond a cluster",
        ));
    }
    match st {
        Ok(flate2::Status::StreamEnd) => {}
        Ok(_) if n == c => {} // a full cluster; the padding after the stream is ignored
        _ => return Err(unsafe_("qcow2 compressed cluster is corrupt")),
    }
    out.truncate(n);
    Ok(out)
}
