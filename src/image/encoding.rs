//! `Content-Encoding` of HTTP bodies: what rivet does when a server encodes what it sends.
//!
//! rivet asks for `Accept-Encoding: identity`, so a well-behaved server sends the bytes as
//! stored: the checksum is of those bytes, and byte ranges (resume) mean what they say. Some
//! servers encode all the same (an object stored with `Content-Encoding: gzip` metadata is
//! served that way whatever the client asks). IPA's HTTP client decodes `gzip` and `deflate`
//! transparently and hashes the decoded image, so rivet does the same for those two, with
//! resume turned off for such a body (its ranges would be of the encoded bytes). Any other
//! coding (`br`, `zstd`, `compress`, ...) is refused with a clear error.
//!
//! Decoded output is handed on in pieces of bounded size (each input slice is small), so a
//! body that inflates a thousandfold never sits in memory whole.

use std::io::{self, Write};

use bytes::Bytes;
use flate2::write::{MultiGzDecoder, ZlibDecoder};
use reqwest::header::{HeaderMap, CONTENT_ENCODING};

/// Input fed to the inflater at a time: at most ~4 MiB of output per slice (deflate's
/// ratio is bounded by 1032:1).
const SLICE: usize = 4096;

/// A `Content-Encoding` rivet does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsupportedEncoding {
    /// The header is not visible ASCII.
    #[error("an unreadable Content-Encoding")]
    Unreadable,
    /// A coding (or a stack of them) other than one gzip or deflate.
    #[error(
        "the server sent Content-Encoding: {0} although rivet asked for identity; only gzip \
         and deflate are decoded"
    )]
    Coding(String),
}

/// How a body is decoded.
pub enum Decoding {
    /// Sent as stored.
    Identity,
    /// `gzip` / `x-gzip` (all members).
    Gzip(Box<MultiGzDecoder<Vec<u8>>>),
    /// `deflate` (a zlib stream, as HTTP defines it).
    Deflate(Box<ZlibDecoder<Vec<u8>>>),
}

impl Decoding {
    /// The decoding a response's `Content-Encoding` asks for; `Err` names a coding rivet does
    /// not decode.
    pub fn for_response(h: &HeaderMap) -> Result<Decoding, UnsupportedEncoding> {
        let mut codings = Vec::new();
        for v in h.get_all(CONTENT_ENCODING) {
            let v = v.to_str().map_err(|_| UnsupportedEncoding::Unreadable)?;
            codings.extend(
                v.split(',')
                    .map(|c| c.trim().to_ascii_lowercase())
                    .filter(|c| !c.is_empty() && c != "identity"),
            );
        }
        match codings.as_slice() {
            [] => Ok(Decoding::Identity),
            [one] if one == "gzip" || one == "x-gzip" => {
                Ok(Decoding::Gzip(Box::new(MultiGzDecoder::new(Vec::new()))))
            }
            [one] if one == "deflate" => {
                Ok(Decoding::Deflate(Box::new(ZlibDecoder::new(Vec::new()))))
            }
            other => Err(UnsupportedEncoding::Coding(other.join(", "))),
        }
    }

    /// Whether the body is sent as stored.
    pub fn is_identity(&self) -> bool {
        matches!(self, Decoding::Identity)
    }

    /// Decodes `chunk`, handing the output to `emit` in pieces.
    pub fn push<E>(
        &mut self,
        chunk: Bytes,
        emit: &mut dyn FnMut(Bytes) -> Result<(), E>,
    ) -> Result<(), DecodeError<E>> {
        match self {
            Decoding::Identity => emit(chunk).map_err(DecodeError::Sink),
            Decoding::Gzip(d) => feed(d.as_mut(), &chunk, emit),
            Decoding::Deflate(d) => feed(d.as_mut(), &chunk, emit),
        }
    }

    /// The end of the body: the rest of the output; an error when the encoded stream is cut.
    pub fn finish<E>(
        &mut self,
        emit: &mut dyn FnMut(Bytes) -> Result<(), E>,
    ) -> Result<(), DecodeError<E>> {
        match self {
            Decoding::Identity => Ok(()),
            Decoding::Gzip(d) => {
                d.try_finish().map_err(DecodeError::Corrupt)?;
                drain(d.get_mut(), emit)
            }
            Decoding::Deflate(d) => {
                d.try_finish().map_err(DecodeError::Corrupt)?;
                drain(d.get_mut(), emit)
            }
        }
    }
}

/// Why decoding stopped.
#[derive(Debug)]
pub enum DecodeError<E> {
    /// The encoded stream is not valid (or was cut).
    Corrupt(io::Error),
    /// The consumer refused the output.
    Sink(E),
}

/// The inflaters above: they write their output into a `Vec` that is drained per slice.
trait Inflate: Write {
    fn output(&mut self) -> &mut Vec<u8>;
}

impl Inflate for MultiGzDecoder<Vec<u8>> {
    fn output(&mut self) -> &mut Vec<u8> {
        self.get_mut()
    }
}

impl Inflate for ZlibDecoder<Vec<u8>> {
    fn output(&mut self) -> &mut Vec<u8> {
        self.get_mut()
    }
}

fn feed<E>(
    d: &mut dyn Inflate,
    chunk: &[u8],
    emit: &mut dyn FnMut(Bytes) -> Result<(), E>,
) -> Result<(), DecodeError<E>> {
    for slice in chunk.chunks(SLICE) {
        d.write_all(slice)
            .and_then(|()| d.flush())
            .map_err(DecodeError::Corrupt)?;
        drain(d.output(), emit)?;
    }
    Ok(())
}

fn drain<E>(
    out: &mut Vec<u8>,
    emit: &mut dyn FnMut(Bytes) -> Result<(), E>,
) -> Result<(), DecodeError<E>> {
    if out.is_empty() {
        return Ok(());
    }
    emit(Bytes::from(std::mem::take(out))).map_err(DecodeError::Sink)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, HeaderValue::from_str(v).unwrap());
        h
    }

    fn decode(d: &mut Decoding, data: &[u8]) -> Result<(Vec<u8>, usize), String> {
        let mut out = Vec::new();
        let mut biggest = 0;
        let mut emit = |b: Bytes| -> Result<(), ()> {
            biggest = biggest.max(b.len());
            out.extend_from_slice(&b);
            Ok(())
        };
        for c in data.chunks(100_000) {
            d.push(Bytes::copy_from_slice(c), &mut emit)
                .map_err(|e| format!("{e:?}"))?;
        }
        d.finish(&mut emit).map_err(|e| format!("{e:?}"))?;
        Ok((out, biggest))
    }

    #[test]
    fn gzip_and_deflate_decode_in_bounded_pieces() {
        let plain = vec![0u8; 64 << 20]; // inflates about a thousandfold
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let mut d = Decoding::for_response(&headers("gzip")).unwrap();
        let (out, biggest) = decode(&mut d, &gz).unwrap();
        assert!(out == plain);
        assert!(biggest <= 5 << 20, "{biggest}");
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(b"hello").unwrap();
        let z = z.finish().unwrap();
        let mut d = Decoding::for_response(&headers("identity, deflate")).unwrap();
        assert_eq!(decode(&mut d, &z).unwrap().0, b"hello");
    }

    #[test]
    fn a_cut_gzip_stream_is_an_error() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&[7u8; 100_000]).unwrap();
        let gz = gz.finish().unwrap();
        let mut d = Decoding::for_response(&headers("x-gzip")).unwrap();
        assert!(decode(&mut d, &gz[..gz.len() - 4]).is_err());
    }

    #[test]
    fn other_codings_are_named() {
        assert!(Decoding::for_response(&HeaderMap::new())
            .unwrap()
            .is_identity());
        let e = Decoding::for_response(&headers("br")).err().unwrap();
        assert!(e.to_string().contains("Content-Encoding: br"), "{e}");
        assert!(Decoding::for_response(&headers("gzip, gzip")).is_err());
    }
}
