//! Unit tests of config drive decoding, checking and the vfat rebuild.

use super::*;
use base64::Engine;

/// `genisoimage -V config-2 -R -J` of an openstack/ and an ec2/ tree (see iso9660.rs).
const ISO: &[u8] = include_bytes!("../../tests/data/configdrive.iso");
/// The same image, gzipped and base64-encoded, as Ironic sends it.
const B64: &str = include_str!("../../tests/data/configdrive.b64");

fn no_fetch(url: &str) -> Result<Vec<u8>, FetchFailure> {
    panic!("unexpected fetch of {url}")
}

fn serving(body: Vec<u8>) -> impl Fn(&str) -> Result<Vec<u8>, FetchFailure> {
    move |_: &str| -> Result<Vec<u8>, FetchFailure> { Ok(body.clone()) }
}

fn details(e: AgentError) -> String {
    match e {
        AgentError::Deployment(d) => d,
        other => panic!("not a DeploymentError: {other:?}"),
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[test]
fn gzip_base64_string() {
    let img = materialise("n", B64, &no_fetch).unwrap();
    assert_eq!(img, ISO);
    // MIME-style line breaks are skipped like any non-alphabet character.
    let wrapped = B64
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\r\n");
    assert_eq!(materialise("n", &wrapped, &no_fetch).unwrap(), ISO);
}

#[test]
fn malformed_base64_is_reported_as_ipa_does() {
    let e = details(materialise("node-1", "abc", &no_fetch).unwrap_err());
    assert_eq!(
        e,
        "Config drive for node node-1 is not base64 encoded or the content is malformed. Error: Incorrect padding."
    );
    let e = details(materialise("node-1", "not base64!", &no_fetch).unwrap_err());
    assert_eq!(
        e,
        "Config drive for node node-1 is not base64 encoded or the content is malformed. Error: Invalid base64-encoded string: number of data characters (9) cannot be 1 more than a multiple of 4."
    );
    let e = details(materialise("node-1", "caf\u{e9}", &no_fetch).unwrap_err());
    assert_eq!(
        e,
        "Config drive for node node-1 is not base64 encoded or the content is malformed. ValueError: string argument should contain only ASCII characters."
    );
}

#[test]
fn base64_that_is_not_gzip() {
    // "hello", base64-encoded but not gzipped.
    let e = details(materialise("n", "aGVsbG8=", &no_fetch).unwrap_err());
    assert!(
        e.starts_with(
            "Encountered error while decompressing and writing config drive for node n. Error: "
        ),
        "{e}"
    );
}

#[test]
fn b64decode_matches_python() {
    // Outputs of Python 3.11's base64.b64decode on the same inputs.
    assert_eq!(b64decode(b"YWJj\nZA==").unwrap(), b"abcd");
    assert_eq!(b64decode(b"YW=JjZA==").unwrap(), b"abcd");
    assert_eq!(b64decode(b"YWJjZA==garbage!!").unwrap(), b"abcd");
    assert_eq!(b64decode(b"YR==").unwrap(), b"a");
    assert_eq!(b64decode(b"").unwrap(), b"");
    assert_eq!(
        b64decode(b"YWJjZA").unwrap_err().to_string(),
        "Incorrect padding"
    );
    assert_eq!(
        b64decode(b"YQ=").unwrap_err().to_string(),
        "Incorrect padding"
    );
    assert_eq!(
        b64decode(b"ab=c").unwrap_err().to_string(),
        "Incorrect padding"
    );
    assert_eq!(
        b64decode(b"YWJj====x").unwrap_err().to_string(),
        "Invalid base64-encoded string: number of data characters (5) cannot be 1 more than a multiple of 4"
    );
    assert_eq!(
        b64decode(b"Y").unwrap_err().to_string(),
        "Invalid base64-encoded string: number of data characters (1) cannot be 1 more than a multiple of 4"
    );
}

#[test]
fn oversize_gzip_is_refused_with_its_size() {
    // 65 gzip members of 1 MiB of zeros each: 65 MiB once decompressed.
    let member = gzip(&vec![0u8; MIB as usize]);
    let gz = member.repeat(65);
    let text = base64::engine::general_purpose::STANDARD.encode(gz);
    let e = details(materialise("u", &text, &no_fetch).unwrap_err());
    assert_eq!(
        e,
        "Config drive size exceeds maximum limit of 64MiB. Size of the given config drive is 65 MiB for node u."
    );
    // 64 MiB exactly is fine.
    let text = base64::engine::general_purpose::STANDARD.encode(member.repeat(64));
    assert_eq!(
        materialise("u", &text, &no_fetch).unwrap().len() as u64,
        MAX_CONFIG_DRIVE_SIZE
    );
}

#[test]
fn oversize_raw_download_is_refused() {
    let mut body = vec![0u8; MAX_CONFIG_DRIVE_SIZE as usize + 1];
    body[..40 * 1024].copy_from_slice(&ISO[..40 * 1024]);
    let e = details(materialise("u", "http://h/cd", &serving(body)).unwrap_err());
    assert_eq!(
        e,
        "Config drive size exceeds maximum limit of 64MiB. Size of the given config drive is 65 MiB for node u."
    );
}

#[test]
fn url_serving_base64_or_a_raw_image() {
    let img = materialise("n", "http://h/cd", &serving(B64.as_bytes().to_vec())).unwrap();
    assert_eq!(img, ISO);
    let img = materialise("n", "HTTPS://h/cd.iso", &serving(ISO.to_vec())).unwrap();
    assert_eq!(img, ISO);
}

#[test]
fn url_that_cannot_be_fetched() {
    let refuse = |_: &str| -> Result<Vec<u8>, FetchFailure> { Err("connection refused".into()) };
    let e = details(materialise("n", "http://h/cd", &refuse).unwrap_err());
    assert_eq!(
        e,
        "Can't download the configdrive content for node n from 'http://h/cd'. Reason: connection refused"
    );
}

#[test]
fn kind_and_check_of_the_fixture() {
    assert_eq!(kind(ISO), DriveKind::Iso9660);
    check(ISO).unwrap();
    assert_eq!(kind(&[0u8; 40000]), DriveKind::Unknown);
    assert!(check(&[0u8; 40000]).is_err());
    assert!(check(&[]).is_err());

    // The label is compared case-insensitively; another label is refused.
    let mut upper = ISO.to_vec();
    upper[32768 + 40..32768 + 48].copy_from_slice(b"CONFIG-2");
    assert!(check(&upper).is_ok());
    let mut other = ISO.to_vec();
    other[32768 + 40..32768 + 48].copy_from_slice(b"cidata  ");
    let e = check(&other).unwrap_err().to_string();
    assert!(e.contains("cidata"), "{e}");
}

#[test]
fn rebuild_as_vfat_and_read_back() {
    let img = rebuild_vfat(ISO, 64 * MIB).unwrap();
    assert_eq!(img.len() as u64, MIN_VFAT);
    assert_eq!(kind(&img), DriveKind::Vfat);
    check(&img).unwrap();

    let fs = fatfs::FileSystem::new(Cursor::new(img), fatfs::FsOptions::new()).unwrap();
    assert_eq!(fs.volume_label(), "CONFIG-2");
    let files = iso9660::list_files(ISO).unwrap();
    for (path, data) in &files {
        let mut back = Vec::new();
        fs.root_dir()
            .open_file(path)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(&back, data, "{path}");
    }
    let mut meta = String::new();
    fs.root_dir()
        .open_file("openstack/latest/meta_data.json")
        .unwrap()
        .read_to_string(&mut meta)
        .unwrap();
    assert!(meta.starts_with(r#"{"uuid": "83679162-1378-4288-a2d4-70e13ec132aa""#));
}

#[test]
fn rebuild_fits_the_partition() {
    let img = rebuild_vfat(ISO, 8 * MIB + 12345).unwrap();
    assert_eq!(img.len() as u64, 8 * MIB);
    check(&img).unwrap();
    assert!(rebuild_vfat(ISO, MIB).is_err());
    assert!(rebuild_vfat(b"not an iso", 64 * MIB).is_err());
}
