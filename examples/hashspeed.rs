//! Single-core throughput of the hash implementations rivet uses, for comparison with
//! `openssl dgst` (the hardware limit the benchmark reports). Run:
//! `cargo run --release --example hashspeed`.
use std::time::Instant;

fn main() {
    let data = vec![0x5au8; 256 << 20];
    let small = vec![0x5au8; 64 << 10];
    for name in ["sha256", "sha512", "md5"] {
        let algo = rivet::image::checksum::Algorithm::from_name(name).unwrap();
        let mut h = algo.hasher();
        let t = Instant::now();
        for _ in 0..(data.len() / small.len()) {
            h.update(&small);
        }
        let _ = h.hex_digest();
        println!(
            "{name:8} {:6.0} MB/s (64 KiB buffer, cache-hot)",
            data.len() as f64 / 1e6 / t.elapsed().as_secs_f64()
        );
    }
    for name in ["md5", "sha1", "sha256", "sha512", "blake2b"] {
        let algo = rivet::image::checksum::Algorithm::from_name(name).unwrap();
        let mut h = algo.hasher();
        let t = Instant::now();
        for chunk in data.chunks(417_792) {
            h.update(chunk);
        }
        let _ = h.hex_digest();
        println!(
            "{name:8} {:6.0} MB/s",
            data.len() as f64 / 1e6 / t.elapsed().as_secs_f64()
        );
    }
    for (name, algo) in [
        ("lc-sha256", &aws_lc_rs::digest::SHA256),
        ("lc-sha512", &aws_lc_rs::digest::SHA512),
    ] {
        let mut c = aws_lc_rs::digest::Context::new(algo);
        let t = Instant::now();
        for chunk in data.chunks(417_792) {
            c.update(chunk);
        }
        let _ = c.finish();
        println!(
            "{name:8} {:6.0} MB/s",
            data.len() as f64 / 1e6 / t.elapsed().as_secs_f64()
        );
    }
}
