//! The embedded default keeps what it accepted (issue 11): one real `herald` process without
//! Redis, its database under its own data directory, killed with `kill -9` and started again.

mod common;

use std::time::Duration;

use common::herald_process::HeraldProcess;
use common::{TestClient, SECRET};
use herald::auth::mint_dev_token;
use serde_json::json;

const QUIET: Duration = Duration::from_millis(400);

async fn client(instance: &HeraldProcess, user: &str, last_id: Option<&str>) -> TestClient {
    let token = mint_dev_token(SECRET, user, None, &[], 3600).unwrap();
    let mut client = match last_id {
        None => TestClient::connect(instance.addr(), &format!("token={token}"), None, "/").await,
        Some(id) => TestClient::connect(instance.addr(), "", Some(json!({ "token": token, "last_id": id })), "/").await,
    }
    .expect("connects");
    assert_eq!(client.next_event("notification").await.expect("welcome")[0]["type"], "welcome");
    client
}

#[tokio::test]
async fn a_restart_of_the_embedded_default_loses_nothing_an_offline_user_waits_for() {
    let mut solo = HeraldProcess::start("solo", "").await;
    // The user was online once (an unchanged client) and left; a device of theirs remembers ids.
    let mut device = client(&solo, "40", None).await;
    let seen = solo.post("/api/v1/notify", json!({ "to": { "user": 40 }, "type": "t", "message": "seen" })).await.1;
    assert_eq!(device.next_notification().await.unwrap()["id"], seen["id"]);
    // (What was delivered in the last tenth of a second before a tab closes may come again.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    device.disconnect().await;
    solo.wait_health("no sockets", |h| h["connections"] == 0).await;
    // The session's end is queued and written within 20 ms; a kill -9 inside that window would
    // replay "seen" again (twice rather than never, as documented). Leave it time on a busy machine.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut sent = vec![];
    for n in 1..=3 {
        let body = json!({ "to": { "user": 40 }, "type": "grade", "message": format!("offline {n}") });
        sent.push(solo.post("/api/v1/notify", body).await.1["id"].as_str().unwrap().to_string());
    }
    solo.restart().await; // kill -9, then the same data directory

    let mut back = client(&solo, "40", None).await;
    for id in &sent {
        assert_eq!(back.next_notification().await.expect("replayed after the restart")["id"], id.as_str());
    }
    assert!(back.receives_nothing("notification", QUIET).await, "once each, nothing older");
    let mut resuming = client(&solo, "40", seen["id"].as_str()).await;
    for id in &sent {
        assert_eq!(resuming.next_notification().await.expect("after its last_id")["id"], id.as_str());
    }

    // History and read state survive a restart too.
    let read = solo.post("/api/v1/users/40/notifications/read", json!({ "ids": [sent[0]] })).await.1;
    assert_eq!(read["unread"], 3);
    solo.restart().await;
    let history = solo.get("/api/v1/users/40/notifications").await;
    assert_eq!(history["items"].as_array().unwrap().len(), 4, "{history}");
    assert_eq!(history["unread"], 3);
    let first = history["items"].as_array().unwrap().iter().find(|i| i["id"] == sent[0].as_str()).unwrap();
    assert_eq!(first["read"], true);

    // New ids keep increasing after a restart.
    let after = solo.post("/api/v1/notify", json!({ "to": { "user": 40 }, "type": "t", "message": "after" })).await.1;
    let (after, last): (herald::store::StreamId, herald::store::StreamId) =
        (after["id"].as_str().unwrap().parse().unwrap(), sent[2].parse().unwrap());
    assert!(after > last);
}

#[tokio::test]
async fn an_embedded_instance_that_dies_right_after_a_connect_replays_the_gap() {
    let mut solo = HeraldProcess::start("solo", "").await;
    let _tab = client(&solo, "41", None).await; // never seen before
    tokio::time::sleep(Duration::from_millis(300)).await;
    solo.restart().await;
    let sent = solo.post("/api/v1/notify", json!({ "to": { "user": 41 }, "type": "t", "message": "after the crash" })).await.1;
    let mut back = client(&solo, "41", None).await;
    assert_eq!(back.next_notification().await.expect("replayed")["id"], sent["id"]);
    assert!(back.receives_nothing("notification", QUIET).await);
}

#[test]
fn a_corrupt_or_unwritable_store_is_a_clear_error_at_startup() {
    let dir = std::env::temp_dir().join(format!("herald-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("herald.db"), vec![0x5a; 8192]).unwrap();
    for data_dir in [dir.to_str().unwrap(), "/proc/herald-cannot-write-here"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .env("HERALD__SERVER__HOST", "127.0.0.1")
            .env("HERALD__SERVER__PORT", "0")
            .env("HERALD__AUTH__JWT_SECRET", SECRET)
            .env("HERALD__REDIS__URL", "")
            .env("HERALD__STORAGE__DATA_DIR", data_dir)
            .output()
            .expect("herald runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{data_dir}: started anyway");
        assert!(stderr.contains("storage"), "{data_dir}: the error names the store: {stderr}");
        assert!(!stderr.contains("panicked"), "{data_dir}: {stderr}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
