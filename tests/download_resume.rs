//! Resuming never splices two versions of a file: every 206 must continue the first answer
//! (same start, same total, same ETag / Last-Modified), or the download restarts from byte 0.
//! The servers here ignore `If-Range` and answer a Range request with a file that changed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{bytes, Route, Server};
use rivet::errors::Result;
use rivet::image::fetch::{FetchConfig, ImageDownload, Progress, Sink};
use rivet::image::info::ImageInfo;

/// Keeps what it is given, and counts restarts.
#[derive(Default)]
struct Collect {
    data: Vec<u8>,
    resets: usize,
}

impl Sink for Collect {
    fn expect_len(&mut self, _len: u64) -> Result<()> {
        Ok(())
    }
    fn data(&mut self, b: Bytes) -> Result<()> {
        self.data.extend_from_slice(&b);
        Ok(())
    }
    fn reset(&mut self) -> Result<()> {
        self.data.clear();
        self.resets += 1;
        Ok(())
    }
}

fn download(url: String) -> Collect {
    let info = ImageInfo {
        id: "swap".into(),
        urls: vec![url],
        ..Default::default()
    };
    let cfg = FetchConfig {
        retries: 3,
        retry_interval: Duration::from_millis(10),
        ..FetchConfig::default()
    };
    let mut dl = ImageDownload::new(&info, &cfg, Arc::new(Progress::default())).unwrap();
    let mut sink = Collect::default();
    dl.run(&mut sink).unwrap();
    sink
}

const LM1: &str = "Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\n";
const LM2: &str = "Last-Modified: Tue, 02 Jan 2024 00:00:00 GMT\r\n";

#[test]
fn a_206_of_another_version_restarts_from_zero() {
    let s = Server::start();
    let old = bytes(2 << 20, 81);
    let new = bytes(2 << 20, 82); // same length: only the validators tell them apart
    let cases = [
        (
            "etag",
            "ETag: \"v1\"\r\n".to_string(),
            "ETag: \"v2\"\r\n".to_string(),
        ),
        ("last-modified", LM1.to_string(), LM2.to_string()),
        (
            "etag-dropped",
            "ETag: \"v1\"\r\n".to_string(),
            String::new(),
        ),
        (
            "etag-same-date-changed",
            format!("ETag: \"v1\"\r\n{LM1}"),
            format!("ETag: \"v1\"\r\n{LM2}"),
        ),
    ];
    for (name, first, later) in cases {
        let url = s.route(
            &format!("/{name}"),
            Route::Swap {
                old: old.clone(),
                new: new.clone(),
                after: 1 << 20,
                first,
                later,
            },
        );
        let got = download(url);
        assert!(
            got.data == *new,
            "{name}: the download spliced two versions"
        );
        assert_eq!(got.resets, 1, "{name}");
    }
}

#[test]
fn a_206_of_the_same_version_resumes() {
    let s = Server::start();
    let data = bytes(2 << 20, 83);
    let url = s.route(
        "/same",
        Route::Swap {
            old: data.clone(),
            new: data.clone(),
            after: 1 << 20,
            first: format!("ETag: \"v1\"\r\n{LM1}"),
            later: "ETag: \"v1\"\r\n".to_string(),
        },
    );
    let got = download(url);
    assert!(got.data == *data);
    assert_eq!(got.resets, 0, "resumed, not restarted");
}
