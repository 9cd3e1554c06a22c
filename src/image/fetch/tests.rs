//! Unit tests of `fetch`.

use super::*;
use crate::image::http::auth_header;

fn info() -> ImageInfo {
    ImageInfo {
        id: "fake_id".into(),
        urls: vec!["http://example.org".into()],
        ..Default::default()
    }
}

#[test]
fn conductor_header_wins() {
    let mut i = info();
    i.image_request_authorization = Some("QmVhcmVyIGYwMA==".into()); // "Bearer f00"
    i.image_server_auth_strategy = Some("http_basic".into());
    let h = auth_header(&i, &FetchConfig::default()).unwrap().unwrap();
    assert_eq!(h, "Bearer f00");
}

#[test]
fn basic_auth_from_info_then_config() {
    let mut i = info();
    i.image_server_auth_strategy = Some("http_basic".into());
    i.image_server_user = Some("u".into());
    i.image_server_password = Some("p".into());
    let h = auth_header(&i, &FetchConfig::default()).unwrap().unwrap();
    assert_eq!(h, "Basic dTpw");
    let cfg = FetchConfig {
        auth_strategy: crate::config::AuthStrategy::HttpBasic,
        auth_user: Some("u".into()),
        auth_password: Some("p".into()),
        ..Default::default()
    };
    assert_eq!(auth_header(&info(), &cfg).unwrap().unwrap(), "Basic dTpw");
    assert_eq!(auth_header(&info(), &FetchConfig::default()).unwrap(), None);
}

#[test]
fn missing_basic_auth_fields() {
    let mut i = info();
    i.image_server_auth_strategy = Some("http_basic".into());
    i.image_server_password = Some("p".into());
    let e = auth_header(&i, &FetchConfig::default()).unwrap_err();
    assert_eq!(e.type_name(), "ImageDownloadError");
    assert_eq!(
        e.details(),
        "Download of image fake_id failed: Missing ['user'] fields from HTTP(S) basic auth config"
    );
    i.image_server_password = Some(String::new());
    let e = auth_header(&i, &FetchConfig::default()).unwrap_err();
    assert!(e.details().contains("Missing ['user', 'password'] fields"));
}

#[test]
fn range_helpers() {
    let mut h = HeaderMap::new();
    h.insert(header::ETAG, HeaderValue::from_static("\"abc\""));
    assert_eq!(resume_validator(&h), None);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    assert_eq!(resume_validator(&h).unwrap(), "\"abc\"");
    h.insert(header::ETAG, HeaderValue::from_static("W/\"abc\""));
    assert_eq!(resume_validator(&h), None);
    h.insert(
        header::CONTENT_RANGE,
        HeaderValue::from_static("bytes 100-199/200"),
    );
    assert_eq!(content_range_start(&h), Some(100));
}
