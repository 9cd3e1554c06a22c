//! Single-core speed of the random generators considered for the overwrite pass of
//! `rivet::erase` (why the module uses AES-128-CTR from aws-lc-rs). Run:
//! `cargo run --release --example erase_rng_speed` (and without `--release`: the tests and
//! the debug agent use that profile).
use std::time::Instant;

use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_128, AES_256};
use aws_lc_rs::iv::FixedLength;
use rand::{RngCore, SeedableRng};

const BUF: usize = 4 << 20;
const TOTAL: usize = 1 << 30;

fn report(name: &str, t: Instant) {
    let s = t.elapsed().as_secs_f64();
    println!("{name:28} {:6.0} MB/s", TOTAL as f64 / 1e6 / s);
}

fn aes(name: &str, alg: &'static aws_lc_rs::cipher::Algorithm, key: &[u8], buf: &mut [u8]) {
    let k = EncryptingKey::ctr(UnboundCipherKey::new(alg, key).unwrap()).unwrap();
    let t = Instant::now();
    for i in 0..(TOTAL / BUF) as u128 {
        let iv = (i * (BUF as u128 / 16)).to_be_bytes();
        k.less_safe_encrypt(buf, EncryptionContext::Iv128(FixedLength::from(iv)))
            .unwrap();
    }
    report(name, t);
}

fn main() {
    let mut buf = vec![0u8; BUF];
    aes("aws-lc-rs AES-128-CTR", &AES_128, &[7u8; 16], &mut buf);
    aes("aws-lc-rs AES-256-CTR", &AES_256, &[7u8; 32], &mut buf);
    let mut c8 = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let t = Instant::now();
    for _ in 0..TOTAL / BUF {
        c8.fill_bytes(&mut buf);
    }
    report("rand_chacha ChaCha8", t);
    let mut c12 = rand_chacha::ChaCha12Rng::seed_from_u64(1);
    let t = Instant::now();
    for _ in 0..TOTAL / BUF {
        c12.fill_bytes(&mut buf);
    }
    report("rand_chacha ChaCha12", t);
}
