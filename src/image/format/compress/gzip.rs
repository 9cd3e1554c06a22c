//! gzip members (RFC 1952) around raw deflate: the framing is read here, the deflate data by
//! flate2, so every member's CRC-32 and length are checked and what follows the last member is
//! decided explicitly.

use flate2::{Crc, Decompress, FlushDecompress, Status};

use super::{corrupt, Codec, CompressError, Inflate, Output, GZIP_HEADER_MAX};

const ID: [u8; 3] = [0x1f, 0x8b, 0x08];
const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const RESERVED: u8 = 0xe0;

enum State {
    /// Gathering a member's header.
    Header(Vec<u8>),
    /// Inside a member's deflate data.
    Body(Box<Decompress>, Crc),
    /// Gathering a member's 8-byte trailer.
    Trailer(Vec<u8>, Crc),
    /// A member ended: the end of the file, or another member.
    Between,
}

/// The gzip decompressor.
pub(super) struct Gzip {
    state: State,
    /// Members completed: bad bytes after one are trailing garbage, before any corruption.
    members: u64,
}

impl Gzip {
    pub(super) fn new() -> Self {
        Gzip {
            state: State::Header(Vec::new()),
            members: 0,
        }
    }
}

/// The length of the complete header at the start of `h`, `None` if more bytes are needed.
fn header_len(h: &[u8]) -> Result<Option<usize>, CompressError> {
    if h.len() < 10 {
        return Ok(None);
    }
    if h[..3] != ID || h[3] & RESERVED != 0 {
        return Err(corrupt(Codec::Gzip, "invalid member header"));
    }
    let flags = h[3];
    let mut at = 10;
    if flags & FEXTRA != 0 {
        let Some(x) = h.get(at..at + 2) else {
            return Ok(None);
        };
        at += 2 + usize::from(u16::from_le_bytes([x[0], x[1]]));
    }
    for f in [FNAME, FCOMMENT] {
        if flags & f != 0 {
            match h.get(at..).and_then(|r| r.iter().position(|&b| b == 0)) {
                Some(nul) => at += nul + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    Ok((h.len() >= at).then_some(at))
}

impl Gzip {
    /// Runs the state machine over `input`; returns when all of it is consumed.
    fn step(&mut self, mut input: &[u8], out: &mut Output<'_>) -> Result<(), CompressError> {
        while !input.is_empty() {
            match &mut self.state {
                // Only another member may follow (gzip(1) ignores trailing zeros with a warning;
                // an image with stray bytes at its end is refused instead): checked as the next
                // header gathers.
                State::Between => self.state = State::Header(Vec::new()),
                State::Header(h) => {
                    let had = h.len();
                    h.extend_from_slice(&input[..input.len().min(GZIP_HEADER_MAX)]);
                    if self.members > 0 && h.iter().zip(ID).any(|(a, b)| *a != b) {
                        return Err(CompressError::TrailingGarbage(Codec::Gzip));
                    }
                    match header_len(h)? {
                        Some(n) => {
                            input = &input[n - had..];
                            self.state = State::Body(Box::new(Decompress::new(false)), Crc::new());
                        }
                        None if h.len() >= GZIP_HEADER_MAX => {
                            return Err(corrupt(Codec::Gzip, "member header too long"))
                        }
                        None => input = &input[h.len() - had..],
                    }
                }
                State::Body(d, crc) => {
                    let buf = out.room()?;
                    let (in0, len0) = (d.total_in(), buf.len());
                    let st = d
                        .decompress_vec(input, buf, FlushDecompress::None)
                        .map_err(|e| corrupt(Codec::Gzip, e))?;
                    crc.update(&buf[len0..]);
                    let used = (d.total_in() - in0) as usize;
                    input = &input[used..];
                    if st == Status::StreamEnd {
                        let crc = std::mem::replace(crc, Crc::new());
                        self.state = State::Trailer(Vec::with_capacity(8), crc);
                    } else if used == 0 && buf.len() == len0 && buf.len() < buf.capacity() {
                        return Err(corrupt(Codec::Gzip, "the deflate data makes no progress"));
                    }
                }
                State::Trailer(t, crc) => {
                    let take = (8 - t.len()).min(input.len());
                    t.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if t.len() == 8 {
                        let sum = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
                        let len = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
                        if sum != crc.sum() || len != crc.amount() {
                            return Err(corrupt(Codec::Gzip, "CRC-32 or length mismatch"));
                        }
                        self.state = State::Between;
                        self.members += 1;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Inflate for Gzip {
    fn feed(&mut self, input: &[u8], out: &mut Output<'_>) -> Result<(), CompressError> {
        self.step(input, out)
    }

    fn finish(&mut self, out: &mut Output<'_>) -> Result<(), CompressError> {
        // Deflate output still held inside the decoder comes out with an empty input.
        while let State::Body(d, crc) = &mut self.state {
            let buf = out.room()?;
            let len0 = buf.len();
            let st = d
                .decompress_vec(&[], buf, FlushDecompress::Finish)
                .map_err(|e| corrupt(Codec::Gzip, e))?;
            crc.update(&buf[len0..]);
            if st == Status::StreamEnd {
                let crc = std::mem::replace(crc, Crc::new());
                self.state = State::Trailer(Vec::new(), crc);
            } else if buf.len() == len0 {
                return Err(CompressError::Truncated(Codec::Gzip));
            }
        }
        match self.state {
            State::Between => Ok(()),
            _ => Err(CompressError::Truncated(Codec::Gzip)),
        }
    }
}
