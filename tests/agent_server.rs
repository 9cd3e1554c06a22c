//! The agent started in-process (no binary): typed settings in, the API served, and the
//! errors a bad start-up gives.

use std::sync::Arc;

use rivet::agent::{log::LogBuffer, server, Agent};
use rivet::config::Settings;

fn settings() -> Settings {
    let mut s = Settings::defaults().unwrap();
    s.set("listen", "127.0.0.1:0", "test").unwrap();
    s.set("agent_token", "t0k3n", "test").unwrap();
    s
}

#[test]
fn the_agent_serves_in_process() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let agent = Agent::new(settings(), Arc::new(LogBuffer::default()));
        let running = server::start(&agent).await.unwrap();
        assert_eq!(running.scheme.as_str(), "http");
        assert!(running.ironic.is_none());
        let base = format!("http://{}", running.addr);
        let client = reqwest::Client::new();
        let root: serde_json::Value = client
            .get(format!("{base}/"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let href = root["default_version"]["links"][0]["href"]
            .as_str()
            .unwrap();
        assert_eq!(href, format!("{base}/v1"));
        let r = client
            .post(format!("{base}/v1/commands/?agent_token=t0k3n&wait=true"))
            .json(&serde_json::json!({"name": "standby.sync", "params": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["command_status"], "SUCCEEDED");
        running.server.abort();
    });
}

#[test]
fn listen_tls_without_files_is_refused_at_start_up() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut s = settings();
    s.set("listen_tls", "yes", "test").unwrap();
    let agent = Agent::new(s, Arc::new(LogBuffer::default()));
    let e = rt.block_on(server::start(&agent)).err().unwrap();
    assert_eq!(
        e.to_string(),
        "listen_tls needs tls_cert_file and tls_key_file"
    );
}

#[test]
fn a_mistyped_setting_names_itself() {
    let mut s = Settings::defaults().unwrap();
    let e = s
        .set("power_backend", "sytem", "--power-backend")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid setting power_backend=\"sytem\" (from --power-backend): not one of log, system"
    );
    assert!(!s.set("no_such_option", "1", "test").unwrap());
}
