//! qcow2 header and tables: the format inspector's checks, then the streaming converter fed
//! the input as a file arriving in pieces. Guest writes must stay inside the virtual size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rivet::image::format::inspect;
use rivet::image::format::qcow2::{GuestSink, Header, Qcow2Stream};

struct Bounded(u64);

impl GuestSink for Bounded {
    fn write_at(&mut self, off: u64, data: &[u8]) -> std::io::Result<()> {
        assert!(off
            .checked_add(data.len() as u64)
            .is_some_and(|e| e <= self.0));
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let all: Vec<String> = [
        "raw", "gpt", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "qed", "iso",
    ]
    .map(String::from)
    .to_vec();
    let _ = inspect::check(data, None, &all, true);
    let _ = inspect::check(data, Some("qcow2"), &all, true);
    let tail = &data[data.len().saturating_sub(inspect::TAIL_LEN)..];
    let _ = inspect::check_tail(data, tail);
    let _ = Header::parse(data);
    let Ok(mut s) = Qcow2Stream::new(data, 1 << 20) else {
        return;
    };
    let mut sink = Bounded(s.header().virtual_size);
    // Pieces of a size the input chooses, as the network would cut them.
    let step = 1 + usize::from(data.first().copied().unwrap_or(0)) * 61;
    for piece in data.chunks(step) {
        if s.feed(piece, &mut sink).is_err() {
            return;
        }
    }
    let _ = s.finish(&mut sink);
});
