//! Set-up shared by the benches that drive the service layer in-process.

use std::path::Path;

use custodia::config::Settings;
use custodia::domain::{Principal, Role};
use custodia::vault::RequestContext;
use secrecy::SecretString;

/// Settings for an in-process app over `data_dir` with fixed bench keys.
pub fn settings(data_dir: &Path) -> Settings {
    Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: data_dir.to_owned(),
        // Inside the temporary directory, so it goes with it.
        key_epoch_file: Some(data_dir.join("epoch-keys")),
        policies: concat!(env!("CARGO_MANIFEST_DIR"), "/policies").into(),
        master_key: Some(SecretString::from("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")),
        jwt_hs256_secret: Some(SecretString::from("bench-secret-bench-secret-bench-secret-0000")),
        ..Settings::default()
    }
}

/// A merchant caller.
pub fn merchant() -> RequestContext {
    RequestContext {
        principal: Principal { role: Role::Merchant, sub: Some("bench".into()) },
        request_id: "bench".into(),
    }
}
