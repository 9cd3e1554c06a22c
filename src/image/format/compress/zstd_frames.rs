//! Zstandard frames through libzstd's streaming decoder, which decodes concatenated frames
//! (and skips skippable ones) by itself. What is decided here: a frame left unfinished at the
//! end is a truncation, and bytes that are not a frame after a finished one are trailing
//! garbage. The window is libzstd's default limit (128 MiB, what `zstd` accepts without
//! `--long=N`/`--memory`).

use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

use super::{corrupt, Codec, CompressError, Inflate, Output};

/// The zstd decompressor.
pub(super) struct Zstd {
    d: Decoder<'static>,
    /// libzstd's last hint: 0 when a frame has just been completed and flushed.
    hint: usize,
    /// Whether any frame completed.
    frames: u64,
}

impl Zstd {
    pub(super) fn new() -> Result<Self, CompressError> {
        Ok(Zstd {
            d: Decoder::new().map_err(|e| corrupt(Codec::Zstd, e))?,
            hint: 1,
            frames: 0,
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
}

impl Inflate for Zstd {
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
