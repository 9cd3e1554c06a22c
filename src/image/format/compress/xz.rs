//! xz streams through liblzma: its plain decoder on one thread, its multi-threaded decoder on
//! several. The decoder is built without the "concatenated" flag (the crate's multi-threaded
//! builder does not expose it), so the stream
//! padding and the next stream after each stream are handled here: a run of zero bytes whose
//! length is a multiple of four, then another stream's magic, or the end of the file.

use liblzma::stream::{Action, MtStreamBuilder, Status, Stream};

use super::{corrupt, Codec, CompressError, Inflate, Limits, Output, XZ_MEMLIMIT};

enum State {
    /// Inside a stream.
    Stream(Box<Stream>),
    /// After a stream: `n` bytes of padding seen so far.
    Padding(u64),
}

/// The xz decompressor.
pub(super) struct Xz {
    state: State,
    limits: Limits,
}

/// With one thread, liblzma's plain decoder: it decodes straight through, holding only the
/// dictionary. With more, its multi-threaded decoder with `limits.threads` threads, as many of
/// which decode at once as `limits.memory` holds: each holds a block's input and output, so
/// `xz -T0 -3` files (12 MiB blocks) need ~25 MiB per thread, small-block files far less
/// (docs/data-path.md). The multi-threaded decoder run with one thread would buffer whole
/// blocks for nothing (measured: 81 MiB of RSS against 59).
fn decoder(limits: Limits) -> Result<Stream, CompressError> {
    if limits.threads <= 1 {
        return Stream::new_stream_decoder(XZ_MEMLIMIT, 0).map_err(|e| corrupt(Codec::Xz, e));
    }
    MtStreamBuilder::new()
        .threads(u32::try_from(limits.threads).unwrap_or(1))
        .memlimit_threading(limits.memory)
        .memlimit_stop(XZ_MEMLIMIT)
        // 0: each call blocks until it made progress (this runs on its own thread).
        .timeout_ms(0)
        .decoder()
        .map_err(|e| corrupt(Codec::Xz, e))
}

impl Xz {
    pub(super) fn new(limits: Limits) -> Result<Self, CompressError> {
        Ok(Xz {
            state: State::Stream(Box::new(decoder(limits)?)),
            limits,
        })
    }
}

/// liblzma's verdict on data that is not a stream where a stream must start.
fn error(e: liblzma::stream::Error, after_a_stream: bool) -> CompressError {
    match e {
        liblzma::stream::Error::Format if after_a_stream => {
            CompressError::TrailingGarbage(Codec::Xz)
        }
        e => corrupt(Codec::Xz, e),
    }
}

impl Inflate for Xz {
    fn feed(&mut self, mut input: &[u8], out: &mut Output<'_>) -> Result<(), CompressError> {
        while !input.is_empty() {
            match &mut self.state {
                State::Padding(n) => {
                    let zeros = input.iter().take_while(|&&b| b == 0).count();
                    *n += zeros as u64;
                    input = &input[zeros..];
                    if input.is_empty() {
                        break;
                    }
                    if *n % 4 != 0 {
                        return Err(CompressError::TrailingGarbage(Codec::Xz));
                    }
                    self.state = State::Stream(Box::new(decoder(self.limits)?));
                    // The next stream's first bytes: a wrong magic is trailing garbage.
                    if !input
                        .starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00][..input.len().min(6)])
                    {
                        return Err(CompressError::TrailingGarbage(Codec::Xz));
                    }
                }
                State::Stream(s) => {
                    let buf = out.room()?;
                    let (in0, len0) = (s.total_in(), buf.len());
                    let st = s
                        .process_vec(input, buf, Action::Run)
                        .map_err(|e| error(e, false))?;
                    let used = (s.total_in() - in0) as usize;
                    let made = buf.len() - len0;
                    let full = buf.len() == buf.capacity();
                    input = &input[used..];
                    if st == Status::StreamEnd {
                        self.state = State::Padding(0);
                    } else if used == 0 && made == 0 && !full {
                        return Err(corrupt(Codec::Xz, "the decoder makes no progress"));
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Output<'_>) -> Result<(), CompressError> {
        loop {
            match &mut self.state {
                State::Padding(n) if *n % 4 == 0 => return Ok(()),
                State::Padding(_) => return Err(CompressError::TrailingGarbage(Codec::Xz)),
                State::Stream(s) => {
                    let buf = out.room()?;
                    let len0 = buf.len();
                    let st = s
                        .process_vec(&[], buf, Action::Finish)
                        .map_err(|e| error(e, false))?;
                    match st {
                        Status::StreamEnd => self.state = State::Padding(0),
                        // No progress possible without more input: the stream was cut.
                        Status::MemNeeded => return Err(CompressError::Truncated(Codec::Xz)),
                        _ if buf.len() == len0 && buf.len() < buf.capacity() => {
                            return Err(CompressError::Truncated(Codec::Xz))
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
