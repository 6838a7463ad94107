//! The PostgreSQL backend under the attacks of the review of issue 14: a source store altered
//! before `store copy`, a destination that is not empty, a config file with a syntax error
//! beside a secret, a frozen sequencer, a row lock held for ever. Needs
//! `CUSTODIA_TEST_DATABASE_URL` for the PostgreSQL parts (skipped without it, required by
//! `.ci/run`).

use std::path::Path;

use serde_json::json;

use crate::helpers::{MASTER_KEY, TestApp};
use crate::pg::Database;

/// Runs the `custodia` binary with `args` and `env`; (success, stdout, stderr).
async fn custodia(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_custodia"))
        .args(args)
        .env_remove("CUSTODIA_DATABASE_URL")
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A stopped sled server's data directory holding one customer and a signed checkpoint.
async fn sled_source() -> TestApp {
    let mut sled = crate::helpers::spawn_app_with(|s| {
        s.store = custodia::config::StoreKind::Sled;
        s.database_url = None;
    })
    .await;
    sled.create_customer(json!({"name": "Copied", "email": "copied@copy.test"})).await;
    sled.shutdown().await;
    sled
}

async fn copy(data_dir: &Path, url: &str) -> (bool, String, String) {
    let dir = data_dir.to_str().unwrap();
    custodia(
        &["store", "copy", "--from-dir", dir],
        &[("CUSTODIA_DATABASE_URL", url), ("CUSTODIA_MASTER_KEY", MASTER_KEY)],
    )
    .await
}

#[tokio::test]
async fn store_copy_refuses_a_source_whose_newest_checkpoint_signature_does_not_verify() {
    let Some(db) = Database::create() else { return };
    let sled = sled_source().await;
    let dir = sled.data_dir.path();
    // The note's text (and so its root) stays: only the signature is broken, which the root
    // check alone cannot see.
    let (size, note) = crate::helpers::latest_stored_checkpoint(dir);
    let text = String::from_utf8(note.clone()).unwrap();
    let (body, signature) = text.trim_end().rsplit_once(' ').unwrap();
    let mut broken: Vec<char> = signature.chars().collect();
    let i = broken.len() / 2;
    broken[i] = if broken[i] == 'A' { 'B' } else { 'A' };
    let altered = format!("{body} {}\n", broken.into_iter().collect::<String>());
    assert_ne!(altered, text);
    crate::helpers::replace_stored_checkpoint(dir, size, altered.into_bytes());
    let (ok, stdout, stderr) = copy(dir, &db.url).await;
    assert!(!ok, "an altered source was copied: {stdout}");
    assert!(stderr.contains("does not verify under its log's key"), "{stderr}");
    // Refused before anything was written.
    assert_eq!(db.number("SELECT count(*) FROM audit_events"), Some(0));
    assert_eq!(db.number("SELECT count(*) FROM meta"), Some(0));

    // The genuine note copies.
    crate::helpers::replace_stored_checkpoint(dir, size, note);
    let (ok, stdout, stderr) = copy(dir, &db.url).await;
    assert!(ok && stdout.contains("matches the newest signed checkpoint"), "{stdout}{stderr}");

    // Without the master key the signature cannot be checked: refused, nothing copied.
    let Some(other) = Database::create() else { return };
    let (ok, _, stderr) = custodia(
        &["store", "copy", "--from-dir", dir.to_str().unwrap()],
        &[("CUSTODIA_DATABASE_URL", &other.url)],
    )
    .await;
    assert!(!ok && stderr.contains("no master key"), "{stderr}");
}

#[tokio::test]
async fn store_copy_refuses_a_destination_holding_only_a_stray_row() {
    let Some(db) = Database::create() else { return };
    let sled = sled_source().await;
    let (ok, _, stderr) =
        custodia(&["db", "migrate"], &[("CUSTODIA_STORE", "postgres"), ("CUSTODIA_DATABASE_URL", &db.url)])
            .await;
    assert!(ok, "{stderr}");
    let stray = [
        "INSERT INTO meta (name, value) VALUES ('stray', '\\x00')",
        "INSERT INTO checkpoints (size, note) VALUES (7, '\\x00')",
        "INSERT INTO pending_events (write_id, pos, prefix, time) VALUES (1, 0, '\\x00', 't')",
    ];
    for (i, insert) in stray.iter().enumerate() {
        db.number(insert);
        let (ok, stdout, stderr) = copy(sled.data_dir.path(), &db.url).await;
        assert!(!ok && stderr.contains("not empty"), "stray row {i} was not seen: {stdout}{stderr}");
        assert_eq!(db.number("SELECT count(*) FROM customers"), Some(0));
        db.number("DELETE FROM meta; DELETE FROM checkpoints; DELETE FROM pending_events");
    }
}
