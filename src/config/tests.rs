use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

#[test]
fn every_default_parses() {
    let s = Settings::defaults().unwrap();
    assert_eq!(s.listen_addr().port(), 9999);
    assert_eq!(s.permitted_image_formats.0, vec!["raw", "gpt", "qcow2"]);
    assert!(s.enable_auto_tls);
    assert!(!s.insecure);
}

#[test]
fn later_sources_win() {
    let dir = tempfile::tempdir().unwrap();
    let cmdline = dir.path().join("cmdline");
    std::fs::write(
        &cmdline,
        "BOOT_IMAGE=x ipa-api-url=http://ironic:6385 ipa-insecure=1 ipa-debug=1 \
         ipa-image-download-connection-retries=3 ipa-listen-port=9000 ipa-agent-token=abc",
    )
    .unwrap();
    let conf = dir.path().join("rivet.toml");
    std::fs::write(
        &conf,
        "listen_port = 9100\nlookup_addresses = [\"aa\", \"bb\"]\n",
    )
    .unwrap();
    let mut flags = BTreeMap::new();
    flags.insert("cmdline".to_string(), cmdline.display().to_string());
    flags.insert("config".to_string(), conf.display().to_string());
    flags.insert("agent_token".to_string(), "from-flag".to_string());
    let mut env = BTreeMap::new();
    env.insert("RIVET_LISTEN_PORT".to_string(), "9200".to_string());
    let s = Settings::load(&flags, &env).unwrap();
    assert_eq!(s.api_url.0, vec!["http://ironic:6385"]);
    assert!(s.insecure);
    assert_eq!(s.image_download_connection_retries, 3);
    assert_eq!(s.listen_port, 9200);
    assert_eq!(s.agent_token.as_deref(), Some("from-flag"));
    assert_eq!(s.lookup_addresses.0, vec!["aa", "bb"]);
    let f = s.fetch_config();
    assert_eq!(f.retries, 3);
    assert!(f.insecure);
    assert_eq!(f.connection_timeout, Duration::from_secs(60));
}

#[test]
fn bad_values_are_named_with_their_source() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("rivet.toml");
    std::fs::write(&conf, "disable_bootc_deploy = \"ture\"\n").unwrap();
    let mut flags = BTreeMap::new();
    flags.insert("config".to_string(), conf.display().to_string());
    flags.insert("cmdline".to_string(), "/nonexistent".to_string());
    let e = Settings::load(&flags, &BTreeMap::new()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "invalid setting disable_bootc_deploy=\"ture\" (from {}): not a boolean \
             (1/0, true/false, yes/no, on/off)",
            conf.display()
        )
    );

    let mut env = BTreeMap::new();
    env.insert("RIVET_LISTEN_PORT".to_string(), "ninety".to_string());
    flags.remove("config");
    flags.insert(
        "config".to_string(),
        dir.path().join("none.toml").display().to_string(),
    );
    let e = Settings::load(&BTreeMap::new(), &env);
    assert!(e.is_err_and(|e| e.source_name == "RIVET_LISTEN_PORT" && e.name == "listen_port"));
}

#[test]
fn unknown_keys_in_the_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("rivet.toml");
    std::fs::write(&conf, "image_download_conection_retries = 3\n").unwrap();
    let mut flags = BTreeMap::new();
    flags.insert("config".to_string(), conf.display().to_string());
    flags.insert("cmdline".to_string(), "/nonexistent".to_string());
    let e = Settings::load(&flags, &BTreeMap::new()).unwrap_err();
    assert_eq!(e.name, "image_download_conection_retries");
    assert_eq!(e.why, "no such option");
    assert!(e.to_string().contains(&conf.display().to_string()));
}

#[test]
fn an_explicit_missing_config_file_is_an_error() {
    let mut flags = BTreeMap::new();
    flags.insert("config".to_string(), "/nonexistent/rivet.toml".to_string());
    flags.insert("cmdline".to_string(), "/nonexistent".to_string());
    let e = Settings::load(&flags, &BTreeMap::new()).unwrap_err();
    assert_eq!(e.source_name, "--config");
}

#[test]
fn lookup_overrides_are_typed() {
    let mut s = Settings::defaults().unwrap();
    let cfg = serde_json::json!({
        "agent_md5_checksum_enable": true,
        "permitted_image_formats": ["raw", "vmdk"],
        "heartbeat_timeout": 30,
        "enable_bios_bootloader_install": false,
        "unknown_key": 1,
    });
    s.apply_lookup_config(cfg.as_object().unwrap()).unwrap();
    assert!(s.md5_enabled);
    assert_eq!(s.permitted_image_formats.0, vec!["raw", "vmdk"]);
    assert_eq!(s.heartbeat_timeout.0, Duration::from_secs(30));
    let bad = serde_json::json!({"tls_min_version": "1.1"});
    assert!(s.apply_lookup_config(bad.as_object().unwrap()).is_err());
}

#[test]
fn decompression_limits_are_typed() {
    let s = Settings::defaults().unwrap();
    assert_eq!(
        (s.decompress_threads, s.decompress_memory_mib),
        (Threads::Auto, Mib(32))
    );
    let load = |k: &str, v: &str| {
        let mut env = BTreeMap::new();
        env.insert(sources::env_name(k), v.to_string());
        let mut flags = BTreeMap::new();
        flags.insert("cmdline".to_string(), "/nonexistent".to_string());
        Settings::load(&flags, &env)
    };
    let s = load("decompress_threads", "3").unwrap();
    assert_eq!(s.decompress_threads, Threads::Count(3));
    assert_eq!(
        load("decompress_threads", "AUTO")
            .unwrap()
            .decompress_threads,
        Threads::Auto
    );
    for bad in ["0", "65", "two", "-1"] {
        let e = load("decompress_threads", bad).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "invalid setting decompress_threads=\"{bad}\" (from RIVET_DECOMPRESS_THREADS): \
                 'auto' or a number of threads from 1 to 64"
            )
        );
    }
    assert_eq!(
        load("decompress_memory_mib", "256")
            .unwrap()
            .decompress_memory_mib,
        Mib(256)
    );
    let e = load("decompress_memory_mib", "0").unwrap_err();
    assert!(
        e.to_string().ends_with("a size in MiB from 1 to 65536"),
        "{e}"
    );
}
