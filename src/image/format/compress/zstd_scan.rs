//! Where each Zstandard frame ends, found without decoding it (RFC 8878): the frame header
//! gives the window and the optional content size, then every block header gives the block's
//! size on the wire, so the walk costs a few bytes of parsing per 128 KiB. Each complete frame
//! comes out whole, with a bound on what it decodes to, so that frames can be decoded apart,
//! on several threads, each into a buffer of known size (libzstd has no parallel decoder, and
//! none of the zstd crates splits frames, hence this walker).
//!
//! A frame too big to hold (its bound past `frame_max`) is handed back as it stands, to be
//! decoded by the streaming decoder instead: files made by `zstd` are a single frame, files made
//! by `pzstd` (or `zstd --long` tools that cut frames) are many small ones.

/// The largest block (RFC 8878, Block_Maximum_Size).
const BLOCK_MAX: u64 = 128 << 10;
/// Frame buffers kept for reuse (one gathering, the others with the decoders).
const SPARES: usize = 4;
/// A zstd frame's magic number, as on the wire.
const FRAME_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// What the walker found next.
#[derive(Debug)]
pub(super) enum Step {
    /// The input is used up in the middle of something.
    NeedMore,
    /// A whole frame, from its magic number, and the most bytes it can decode to.
    Frame {
        /// The frame on the wire.
        bytes: Vec<u8>,
        /// An upper bound of its decoded size.
        bound: usize,
    },
    /// A frame past the size limit: its bytes so far, from its magic number. The walk is over:
    /// the rest of the input belongs to the streaming decoder.
    TooBig(Vec<u8>),
}

/// Why the walk stopped.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ScanError {
    /// Bytes that are not a frame where one must start.
    NotAFrame,
    /// A frame header or block header that the format does not allow.
    Corrupt(&'static str),
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Before a frame: its magic number.
    Magic,
    /// A zstd frame's descriptor byte.
    Descriptor,
    /// The rest of the frame header (window, dictionary, content size).
    Header { descriptor: u8 },
    /// A block header.
    Block,
    /// A block's body; then the next block, or the checksum after the last.
    Body { last: bool },
    /// The frame's content checksum.
    Checksum,
    /// A skippable frame's length.
    SkipLen,
    /// Inside a skippable frame: bytes left.
    Skip(u64),
}

/// The walker, fed the compressed bytes in order.
pub(super) struct Scanner {
    /// The current frame's bytes, from its magic number.
    cur: Vec<u8>,
    /// Buffers for the next frames (frames' buffers that came back from their decoder), so
    /// that gathering a frame neither grows nor allocates one in the steady state.
    spares: Vec<Vec<u8>>,
    /// The last frame's size: a new buffer is made that big at once, not grown.
    last: usize,
    /// How much of `cur` is parsed.
    pos: usize,
    state: State,
    /// Bytes the current element needs.
    want: usize,
    /// The current frame's block-size limit, content checksum flag, and decoded-size bound.
    block_max: u64,
    checksum: bool,
    bound: u64,
    /// Frames (skippable ones included) walked to their end.
    frames: u64,
    frame_max: u64,
}

impl Scanner {
    /// A walker handing out frames that decode to at most `frame_max` bytes.
    pub(super) fn new(frame_max: usize) -> Self {
        Scanner {
            cur: Vec::new(),
            spares: Vec::new(),
            last: 0,
            pos: 0,
            state: State::Magic,
            want: 4,
            block_max: BLOCK_MAX,
            checksum: false,
            bound: 0,
            frames: 0,
            frame_max: frame_max as u64,
        }
    }

    /// Gives back a frame's buffer, to gather a later frame in.
    pub(super) fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spares.len() < SPARES {
            buf.clear();
            self.spares.push(buf);
        }
    }

    /// Frames (skippable ones included) walked to their end so far.
    pub(super) fn frames(&self) -> u64 {
        self.frames
    }

    /// Walks `input` up to the next complete frame; returns how many bytes it used.
    pub(super) fn push(&mut self, input: &[u8]) -> (usize, Result<Step, ScanError>) {
        let mut used = 0;
        loop {
            if let State::Skip(left) = self.state {
                let n = (input.len() - used).min(usize::try_from(left).unwrap_or(usize::MAX));
                used += n;
                let left = left - n as u64;
                self.state = State::Skip(left);
                if left > 0 {
                    return (used, Ok(Step::NeedMore));
                }
                self.frames += 1;
                self.next(State::Magic, 4);
                continue;
            }
            let have = self.cur.len() - self.pos;
            if have < self.want {
                let take = (self.want - have).min(input.len() - used);
                self.cur.extend_from_slice(&input[used..used + take]);
                used += take;
                if self.cur.len() - self.pos < self.want {
                    return (used, Ok(Step::NeedMore));
                }
            }
            match self.element() {
                Ok(None) => {}
                Ok(Some(step)) => return (used, Ok(step)),
                Err(e) => return (used, Err(e)),
            }
        }
    }

    /// At the end of the input: whether it ended between frames. `Err(NotAFrame)` when the last
    /// bytes are the start of something that is no frame.
    pub(super) fn ended_cleanly(&self) -> Result<bool, ScanError> {
        let pending = &self.cur[self.pos..];
        match self.state {
            State::Magic if pending.is_empty() => Ok(true),
            State::Magic if is_magic_prefix(pending) => Ok(false),
            State::Magic => Err(ScanError::NotAFrame),
            _ => Ok(false),
        }
    }

    fn next(&mut self, state: State, want: usize) {
        self.state = state;
        self.want = want;
    }

    /// Parses the element whose `want` bytes are in `cur` at `pos`.
    fn element(&mut self) -> Result<Option<Step>, ScanError> {
        // Headers are at most 14 bytes; a block's body is only skipped.
        let mut head = [0u8; 16];
        let n = self.want.min(head.len());
        head[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        let b = &head[..n];
        self.pos += self.want;
        match self.state {
            State::Magic => {
                if b == FRAME_MAGIC {
                    self.block_max = BLOCK_MAX;
                    self.bound = 0;
                    self.next(State::Descriptor, 1);
                } else if b[0] & 0xf0 == 0x50 && b[1..] == [0x2a, 0x4d, 0x18] {
                    self.next(State::SkipLen, 4);
                } else {
                    return Err(ScanError::NotAFrame);
                }
            }
            State::Descriptor => {
                let d = b[0];
                if d & 0x08 != 0 {
                    return Err(ScanError::Corrupt("reserved bit set in a frame header"));
                }
                let single = d & 0x20 != 0;
                let window = usize::from(!single);
                let dict = [0, 1, 2, 4][usize::from(d & 3)];
                let fcs = [usize::from(single), 2, 4, 8][usize::from(d >> 6)];
                self.checksum = d & 0x04 != 0;
                self.next(State::Header { descriptor: d }, window + dict + fcs);
            }
            State::Header { descriptor } => {
                let (single, fcs) = header(descriptor, b);
                if !single {
                    let w = b[0];
                    let base = 1u64 << (10 + u32::from(w >> 3));
                    self.block_max = BLOCK_MAX.min(base + base / 8 * u64::from(w & 7));
                }
                if let Some(size) = fcs {
                    if single {
                        self.block_max = BLOCK_MAX.min(size);
                    }
                    if size > self.frame_max {
                        return Ok(Some(self.too_big()));
                    }
                }
                self.next(State::Block, 3);
            }
            State::Block => {
                let h = u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
                let size = u64::from(h >> 3);
                let (body, decoded) = match (h >> 1) & 3 {
                    0 => (size, size),
                    1 => (1, size),
                    2 => (size, self.block_max),
                    _ => return Err(ScanError::Corrupt("reserved block type")),
                };
                if size > self.block_max {
                    return Err(ScanError::Corrupt("a block larger than the frame allows"));
                }
                self.bound += decoded;
                if self.bound > self.frame_max {
                    return Ok(Some(self.too_big()));
                }
                self.next(State::Body { last: h & 1 != 0 }, body as usize);
            }
            State::Body { last: false } => self.next(State::Block, 3),
            State::Body { last: true } if self.checksum => self.next(State::Checksum, 4),
            State::Body { last: true } | State::Checksum => return Ok(Some(self.frame_done())),
            State::SkipLen => {
                let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                self.cur.clear();
                self.pos = 0;
                self.next(State::Skip(u64::from(len)), 0);
            }
            State::Skip(_) => {}
        }
        Ok(None)
    }

    fn frame_done(&mut self) -> Step {
        self.frames += 1;
        let bound = self.bound as usize;
        self.last = self.cur.len();
        let next = self
            .spares
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.last));
        let bytes = std::mem::replace(&mut self.cur, next);
        self.pos = 0;
        self.next(State::Magic, 4);
        Step::Frame { bytes, bound }
    }

    fn too_big(&mut self) -> Step {
        self.pos = 0;
        self.next(State::Magic, 4);
        Step::TooBig(std::mem::take(&mut self.cur))
    }
}

/// The single-segment flag and the frame content size, from the header bytes after the
/// descriptor.
fn header(descriptor: u8, b: &[u8]) -> (bool, Option<u64>) {
    let single = descriptor & 0x20 != 0;
    let fcs_len = [usize::from(single), 2, 4, 8][usize::from(descriptor >> 6)];
    let field = &b[b.len() - fcs_len..];
    let mut v = 0u64;
    for (i, &byte) in field.iter().enumerate() {
        v |= u64::from(byte) << (8 * i);
    }
    match fcs_len {
        0 => (single, None),
        2 => (single, Some(v + 256)),
        _ => (single, Some(v)),
    }
}

/// Whether `b` (shorter than a magic number) can still become one.
fn is_magic_prefix(b: &[u8]) -> bool {
    let skippable = [0x50, 0x2a, 0x4d, 0x18];
    b == &FRAME_MAGIC[..b.len()]
        || b.iter()
            .zip(skippable)
            .enumerate()
            .all(|(i, (&x, m))| if i == 0 { x & 0xf0 == m } else { x == m })
}
