//! One HTTP answer of an image download, into the sink: accepting it (a first answer, a
//! resumed 206 that must continue it, a refused resume), its `Content-Encoding`
//! ([`crate::image::encoding`]), and its body with the stall timeout, the max duration and the
//! announced length.

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::StatusCode;

use super::{
    content_range_start, content_range_total, resume_validator, Failure, ImageDownload, Sink,
};
use crate::errors::AgentError;
use crate::image::encoding::{DecodeError, Decoding};
use crate::image::http::error_chain;
use std::time::Duration;

/// State of one URL across attempts, for resuming.
#[derive(Default)]
pub(super) struct Cursor {
    /// Bytes of the image handed to the sink.
    pub(super) offset: u64,
    /// Total length of the image, when known.
    pub(super) total: Option<u64>,
    /// `ETag` or `Last-Modified` of the first response, when the server allows ranges.
    pub(super) validator: Option<HeaderValue>,
    /// The first response's `ETag` and `Last-Modified`, which every 206 must repeat.
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    /// The announced length of an encoded body (the decoded length is unknown).
    encoded_total: Option<u64>,
}

impl Cursor {
    /// Why a 206 answer is not the rest of the file the first answer started, if it is not:
    /// another start, another total, another `ETag` (which a 206 must carry when the 200 did,
    /// RFC 9110 §15.3.7) or another `Last-Modified` (when it has one). A server that ignores
    /// `If-Range` would otherwise splice two versions of a file.
    fn mismatch(&self, h: &HeaderMap) -> Option<String> {
        let start = content_range_start(h);
        if start != Some(self.offset) {
            return Some(format!("it starts at byte {start:?}, not {}", self.offset));
        }
        let total = content_range_total(h);
        if self.total.is_some() && total != self.total {
            return Some(format!(
                "it is part of {total:?} bytes, not {:?}",
                self.total
            ));
        }
        if let Some(first) = &self.etag {
            if h.get(header::ETAG) != Some(first) {
                return Some(format!(
                    "its ETag is {:?}, not {first:?}",
                    h.get(header::ETAG)
                ));
            }
        }
        if let (Some(first), Some(now)) = (&self.last_modified, h.get(header::LAST_MODIFIED)) {
            if now != first {
                return Some(format!("its Last-Modified is {now:?}, not {first:?}"));
            }
        }
        None
    }
}

impl ImageDownload {
    /// Takes an answer of status 200, 206 (resuming) or 416 (resuming): sets the cursor up
    /// and says how the body is decoded.
    pub(super) fn start_response(
        &self,
        url: &str,
        status: StatusCode,
        h: &HeaderMap,
        cur: &mut Cursor,
        sink: &mut dyn Sink,
    ) -> Result<Decoding, Failure> {
        let decoding = Decoding::for_response(h).map_err(|e| {
            Failure::Stop(AgentError::download_fatal(
                &self.info.id,
                format!("{url}: {e}"),
            ))
        })?;
        if status == StatusCode::RANGE_NOT_SATISFIABLE {
            tracing::warn!(url, "the server refused to resume; restarting from byte 0");
            cur.validator = None;
            return Err(Failure::Retry(format!(
                "Received status code 416 from {url} when resuming"
            )));
        }
        if status == StatusCode::PARTIAL_CONTENT {
            let why = match decoding.is_identity() {
                true => cur.mismatch(h),
                false => Some("it is encoded".to_string()),
            };
            if let Some(why) = why {
                // Not the same file any more (or a confused server): start over from byte 0.
                tracing::warn!(
                    url,
                    "the resumed answer does not continue the file ({why}); restarting from byte 0"
                );
                cur.validator = None;
                return Err(Failure::Retry(format!(
                    "Server answered a range request for byte {} with another version of the file: {why}",
                    cur.offset
                )));
            }
            if cur.total.is_none() {
                cur.total = content_range_total(h);
                self.progress.set_content_length(cur.total);
            }
            tracing::info!(url, offset = cur.offset, "resuming the download");
            return Ok(decoding);
        }
        if cur.offset > 0 {
            tracing::warn!(url, "the download cannot resume; restarting from byte 0");
            sink.reset().map_err(Failure::Stop)?;
            self.progress.reset_written();
        }
        cur.offset = 0;
        self.progress.set_transferred(0);
        let length = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        cur.etag = h.get(header::ETAG).cloned();
        cur.last_modified = h.get(header::LAST_MODIFIED).cloned();
        if decoding.is_identity() {
            cur.total = length;
            cur.encoded_total = None;
            cur.validator = resume_validator(h);
        } else {
            // The length and the ranges are the encoded body's: no size check against the
            // device before the data, no resume.
            tracing::warn!(
                url,
                "the server encodes the image although asked not to: decoding it"
            );
            cur.total = None;
            cur.encoded_total = length;
            cur.validator = None;
        }
        self.progress.set_content_length(cur.total);
        if let Some(len) = cur.total {
            sink.expect_len(len).map_err(Failure::Stop)?;
        }
        Ok(decoding)
    }

    /// Reads the body into the sink, decoded, each read within the stall timeout and the
    /// max duration; a body shorter (or longer) than announced is not a success.
    pub(super) async fn stream_body(
        &self,
        url: &str,
        resp: reqwest::Response,
        mut decoding: Decoding,
        cur: &mut Cursor,
        sink: &mut dyn Sink,
    ) -> Result<(), Failure> {
        let mut body = resp.bytes_stream();
        let mut raw = 0u64;
        loop {
            let stall = self.cfg.connection_timeout;
            let wait = match self.time_left() {
                Some(left) if left < stall => left,
                _ => stall,
            };
            let next = match tokio::time::timeout(wait, body.next()).await {
                Ok(n) => n,
                Err(_) if self.time_left() == Some(Duration::ZERO) => {
                    return Err(Failure::Stop(self.timeout_error()))
                }
                Err(_) => {
                    return Err(Failure::Retry(
                        "Timed out reading next chunk from webserver".into(),
                    ))
                }
            };
            let chunk = match next {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    return Err(Failure::Retry(format!(
                        "Error reading the image from {url} after {} bytes: {}",
                        cur.offset,
                        error_chain(&e)
                    )))
                }
                None => break,
            };
            raw += chunk.len() as u64;
            let announced = cur
                .total
                .filter(|_| decoding.is_identity())
                .or(cur.encoded_total);
            let so_far = if decoding.is_identity() {
                cur.offset + chunk.len() as u64
            } else {
                raw
            };
            if let Some(t) = announced.filter(|&t| so_far > t) {
                return Err(Failure::Retry(format!(
                    "Received more than the {t} bytes announced"
                )));
            }
            tracing::trace!(len = chunk.len(), "chunk");
            self.decode(url, &mut decoding, Some(chunk), cur, sink)?;
            if self.time_left() == Some(Duration::ZERO) {
                return Err(Failure::Stop(self.timeout_error()));
            }
        }
        let (got, announced) = match decoding.is_identity() {
            true => (cur.offset, cur.total),
            false => (raw, cur.encoded_total),
        };
        if let Some(total) = announced.filter(|&t| got < t) {
            return Err(Failure::Retry(format!(
                "The server closed the connection after {got} of {total} bytes"
            )));
        }
        self.decode(url, &mut decoding, None, cur, sink)
    }

    /// Hands `chunk` (or, with `None`, the end of the body) through the decoding to the sink.
    fn decode(
        &self,
        url: &str,
        decoding: &mut Decoding,
        chunk: Option<Bytes>,
        cur: &mut Cursor,
        sink: &mut dyn Sink,
    ) -> Result<(), Failure> {
        let progress = &self.progress;
        let mut emit = |b: Bytes| -> crate::errors::Result<()> {
            let n = b.len() as u64;
            sink.data(b)?;
            cur.offset += n;
            progress.set_transferred(cur.offset);
            Ok(())
        };
        let r = match chunk {
            Some(c) => decoding.push(c, &mut emit),
            None => decoding.finish(&mut emit),
        };
        r.map_err(|e| match e {
            DecodeError::Sink(e) => Failure::Stop(e),
            DecodeError::Corrupt(e) => {
                Failure::Retry(format!("Cannot decode the body from {url}: {e}"))
            }
        })
    }
}
