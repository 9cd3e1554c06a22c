//! HTTPS image servers (TLS options `cafile`, `insecure`, `certfile`+`keyfile`) and proxies
//! (`proxies`, `no_proxy` per request), against real servers on 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{bytes, sha256, Route, Server};
use rivet::deploy::pipeline::{write_image_to_path, DeployOptions};
use rivet::image::fetch::FetchConfig;
use rivet::image::info::ImageInfo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;

struct Pki {
    ca_pem: String,
    server: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    client_cert_pem: String,
    client_key_pem: String,
    ca_der: CertificateDer<'static>,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(vec![]).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rivet test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let skey = rcgen::KeyPair::generate().unwrap();
    let mut sp = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    sp.subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let scert = sp.signed_by(&skey, &issuer).unwrap();
    let ckey = rcgen::KeyPair::generate().unwrap();
    let cp = rcgen::CertificateParams::new(vec!["client".into()]).unwrap();
    let ccert = cp.signed_by(&ckey, &issuer).unwrap();
    Pki {
        ca_pem: ca.pem(),
        server: (
            vec![scert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(skey.serialize_der())),
        ),
        client_cert_pem: ccert.pem(),
        client_key_pem: ckey.serialize_pem(),
        ca_der: ca.der().clone(),
    }
}

/// An HTTPS server answering every GET with `body`; with `require_client_cert`, only clients
/// presenting a certificate signed by the test CA get through the handshake.
fn https_server(p: &Pki, body: Arc<Vec<u8>>, require_client_cert: bool) -> u16 {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(p.ca_der.clone()).unwrap();
        let v =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(v)
    } else {
        builder.with_no_client_auth()
    };
    let cfg = Arc::new(
        builder
            .with_single_cert(p.server.0.clone(), p.server.1.clone_key())
            .unwrap(),
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in l.incoming().flatten() {
            let (cfg, body) = (cfg.clone(), body.clone());
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(cfg).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut r = BufReader::new(&mut tls);
                loop {
                    let mut line = String::new();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line.trim().is_empty() => break,
                        Ok(_) => {}
                    }
                }
                let _ = write!(
                    tls,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(&body);
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    port
}

fn cfg() -> FetchConfig {
    FetchConfig {
        retries: 0,
        retry_interval: Duration::from_millis(10),
        connection_timeout: Duration::from_secs(5),
        ..FetchConfig::default()
    }
}

fn info(url: &str, data: &[u8]) -> ImageInfo {
    ImageInfo::from_value(&json!({"id": "tls", "urls": [url], "os_hash_algo": "sha256", "os_hash_value": sha256(data)}), false).unwrap()
}

fn write_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn https_needs_a_trusted_ca_or_insecure() {
    let p = pki();
    let data = bytes(2 << 20, 61);
    let port = https_server(&p, data.clone(), false);
    let url = format!("https://127.0.0.1:{port}/img");
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("disk");
    let e = write_image_to_path(
        &info(&url, &data),
        &t,
        &cfg(),
        &DeployOptions::default(),
        Arc::default(),
    )
    .unwrap_err();
    assert_eq!(e.type_name(), "ImageDownloadError");
    assert!(
        e.details().to_lowercase().contains("certificate"),
        "{}",
        e.details()
    );
    let ca = write_file(dir.path(), "ca.pem", &p.ca_pem);
    let c = FetchConfig {
        cafile: Some(ca),
        ..cfg()
    };
    write_image_to_path(
        &info(&url, &data),
        &t,
        &c,
        &DeployOptions::default(),
        Arc::default(),
    )
    .unwrap();
    assert!(std::fs::read(&t).unwrap() == *data);
    let c = FetchConfig {
        insecure: true,
        ..cfg()
    };
    std::fs::remove_file(&t).unwrap();
    write_image_to_path(
        &info(&url, &data),
        &t,
        &c,
        &DeployOptions::default(),
        Arc::default(),
    )
    .unwrap();
    assert!(std::fs::read(&t).unwrap() == *data);
}

#[test]
fn client_certificates() {
    let p = pki();
    let data = bytes(1 << 20, 62);
    let port = https_server(&p, data.clone(), true);
    let url = format!("https://127.0.0.1:{port}/img");
    let dir = tempfile::tempdir().unwrap();
    let ca = write_file(dir.path(), "ca.pem", &p.ca_pem);
    let t = dir.path().join("disk");
    let c = FetchConfig {
        cafile: Some(ca.clone()),
        ..cfg()
    };
    let e = write_image_to_path(
        &info(&url, &data),
        &t,
        &c,
        &DeployOptions::default(),
        Arc::default(),
    )
    .unwrap_err();
    assert_eq!(e.type_name(), "ImageDownloadError", "{e}");
    let c = FetchConfig {
        cafile: Some(ca),
        certfile: Some(write_file(dir.path(), "c.pem", &p.client_cert_pem)),
        keyfile: Some(write_file(dir.path(), "k.pem", &p.client_key_pem)),
        ..cfg()
    };
    write_image_to_path(
        &info(&url, &data),
        &t,
        &c,
        &DeployOptions::default(),
        Arc::default(),
    )
    .unwrap();
    assert!(std::fs::read(&t).unwrap() == *data);
    // certfile without keyfile is a configuration error, said clearly.
    let c = FetchConfig {
        certfile: Some(dir.path().join("c.pem")),
        ..cfg()
    };
    let e = write_image_to_path(
        &info(&url, &data),
        &t,
        &c,
        &DeployOptions::default(),
        Arc::default(),
    )
    .unwrap_err();
    assert!(
        e.details()
            .contains("certfile and keyfile must be given together"),
        "{}",
        e.details()
    );
}

#[test]
fn proxies_apply_per_request_and_no_proxy_bypasses_them() {
    let proxy = Server::start();
    let data = bytes(1 << 20, 63);
    // A host that only the proxy knows: the request arrives in absolute form.
    let target = "http://images.rivet.invalid/os.img";
    proxy.route(
        target,
        Route::Bytes {
            data: data.clone(),
            ranges: false,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("disk");
    let v = json!({"id": "p", "urls": [target], "checksum": sha256(&data),
                   "proxies": {"http": format!("http://127.0.0.1:{}", proxy.port)}});
    let i = ImageInfo::from_value(&v, false).unwrap();
    write_image_to_path(&i, &t, &cfg(), &DeployOptions::default(), Arc::default()).unwrap();
    assert!(std::fs::read(&t).unwrap() == *data);
    assert_eq!(proxy.hits(target), 1);
    // no_proxy names the host: the request goes direct, and that host does not resolve.
    let mut v2 = v.clone();
    v2["no_proxy"] = json!("rivet.invalid,example.org");
    let i = ImageInfo::from_value(&v2, false).unwrap();
    let e =
        write_image_to_path(&i, &t, &cfg(), &DeployOptions::default(), Arc::default()).unwrap_err();
    assert_eq!(e.type_name(), "ImageDownloadError");
    assert_eq!(proxy.hits(target), 1, "no_proxy was not honoured");
    // And the process environment was not touched.
    assert!(std::env::var("no_proxy").is_err());
}
