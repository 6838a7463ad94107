//! The master key inside a PKCS#11 token (an HSM; SoftHSM2 in tests), through the `cryptoki`
//! crate (PKCS#11 v2.40 / v3.0).
//!
//! The key is an AES-256 secret key object that never leaves the token: it must be
//! `CKA_SENSITIVE` and not `CKA_EXTRACTABLE`, and every wrap and unwrap under it is a
//! `C_Encrypt` / `C_Decrypt` with `CKM_AES_GCM` (12-byte nonce drawn here from the OS CSPRNG,
//! the same associated data as a software master key, 128-bit tag). The sealed bytes therefore
//! have exactly the layout of a software wrap (`envelope`), so the epoch-key file's fixed slots
//! and every stored record are unchanged, and a rotation between a file key and a token key is
//! an ordinary master-key rotation.
//!
//! The master key is used only at start-up (unwrap the system and epoch keys), when an epoch
//! key is created, and in a master-key rotation; customers' data keys are unwrapped by epoch keys
//! in memory. So the token sees a handful of calls per epoch, never one per request (a data key
//! is never wrapped directly under a token key: `DataKeyring` refuses one rather than call the
//! token on a request). Calls are blocking: async code makes them through
//! `crypto::off_async_workers` (tokio's blocking pool), and one logged-in session per token is
//! held for the process behind a `std` mutex that is never held across an `.await`.
//!
//! Process-wide facts of PKCS#11 modules: `C_Initialize` runs once per module per process
//! (contexts are shared and never finalised), and SoftHSM2 reads `SOFTHSM2_CONF` once, at
//! that first `C_Initialize`.
//!
//! Key id: a token key's bytes cannot be read, so its id cannot be an HMAC of them as for file
//! keys. It is `mk-` and the first 8 bytes of SHA-256 over a label of its own
//! (`custodia/pkcs11-master-key-id/v1`), the key's `CKA_LABEL` and its `CKA_ID` (each
//! length-prefixed). Both attributes travel with the key when an HSM backs it up or replicates
//! it to another token, so the id survives a restore to a new device (the token's serial number
//! would not). `keys hsm-generate` gives every key 16 random bytes of `CKA_ID`, so two keys
//! differ even under the same label; a key without a `CKA_ID` is refused.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::keys::{KeyId, MASTER_PREFIX};
use super::{CryptoError, fill_random};

/// Setting naming the module (the vendor's PKCS#11 shared library).
pub const MODULE_SETTING: &str = "CUSTODIA_MASTER_KEY_PKCS11_MODULE";
/// Setting naming the token by its label.
pub const TOKEN_SETTING: &str = "CUSTODIA_MASTER_KEY_PKCS11_TOKEN";
/// Setting naming the key by its `CKA_LABEL`.
pub const KEY_SETTING: &str = "CUSTODIA_MASTER_KEY_PKCS11_KEY";
/// Setting holding the user PIN.
pub const PIN_SETTING: &str = "CUSTODIA_MASTER_KEY_PKCS11_PIN";
/// Setting naming a file holding the user PIN.
pub const PIN_FILE_SETTING: &str = "CUSTODIA_MASTER_KEY_PKCS11_PIN_FILE";

/// Length of the `CKA_ID` that [`Pkcs11Token::generate_key`] gives a key, in bytes.
const GENERATED_ID_LEN: usize = 16;
/// GCM tag length in bits (the full 128, as the software path).
const TAG_BITS: u64 = 128;

/// How to reach a token: the module, the token's label and the user PIN.
#[derive(Clone)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (`.so`), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The token's label (`CK_TOKEN_INFO.label`, blank padding trimmed).
    pub token: String,
    /// The user (`CKU_USER`) PIN.
    pub pin: SecretString,
    /// The setting the PIN came from (named in a refused-PIN error, the PIN never is).
    pub pin_setting: &'static str,
}

impl fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token", &self.token)
            .field("pin", &"[redacted]")
            .finish()
    }
}

thread_local! {
    /// Set while [`super::off_async_workers`] runs work on a blocking-pool thread.
    static ON_BLOCKING_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `work` marked as off the async workers (see [`assert_off_async_workers`]).
pub(super) fn on_blocking_thread<T>(work: impl FnOnce() -> T) -> T {
    struct Mark;
    impl Drop for Mark {
        fn drop(&mut self) {
            ON_BLOCKING_THREAD.with(|b| b.set(false));
        }
    }
    ON_BLOCKING_THREAD.with(|b| b.set(true));
    let _mark = Mark;
    work()
}

/// Every `cryptoki` call comes through here first. Inside a tokio runtime it must run under
/// [`super::off_async_workers`]: a blocking token call on an async worker stalls every
/// connection that worker serves. A call that does not is counted
/// (`custodia_pkcs11_calls_on_async_workers_total`, which must stay absent) and logged, so a
/// new call path that forgets it shows in tests and in production; it is not refused.
fn assert_off_async_workers(what: &'static str) {
    let in_runtime = tokio::runtime::Handle::try_current().is_ok();
    if in_runtime && !ON_BLOCKING_THREAD.with(std::cell::Cell::get) {
        metrics::counter!("custodia_pkcs11_calls_on_async_workers_total").increment(1);
        tracing::error!(call = what, "a PKCS#11 call ran on an async worker (a bug: it must run off them)");
    }
}

/// One initialised context per module for the whole process: `C_Initialize` may run only once
/// per module, and contexts are never finalised (sessions of other keyrings may still use them).
static CONTEXTS: LazyLock<Mutex<HashMap<PathBuf, Pkcs11>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn context(module: &Path) -> Result<Pkcs11, CryptoError> {
    let mut contexts = CONTEXTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(ctx) = contexts.get(module) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(module).map_err(|e| {
        setting_error(MODULE_SETTING, format!("cannot load the PKCS#11 module {}: {e}", module.display()))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(setting_error(
                MODULE_SETTING,
                format!("C_Initialize of {} failed: {}", module.display(), rv_name(&e)),
            ));
        }
    }
    contexts.insert(module.to_owned(), ctx.clone());
    Ok(ctx)
}

fn setting_error(setting: &'static str, message: impl Into<String>) -> CryptoError {
    CryptoError::Pkcs11(format!("{setting}: {}", message.into()))
}

/// A short name of a PKCS#11 failure (`PinIncorrect`, `DeviceRemoved`, …) and the function,
/// without the long standard text.
fn rv_name(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("{rv:?} from {function:?}"),
        other => other.to_string(),
    }
}

/// A logged-in token: one session held for the process, re-opened (and logged in again) if the
/// token drops it.
///
/// Invariant: after the token refuses the PIN once (`CKR_PIN_INCORRECT`, `CKR_PIN_LOCKED`,
/// `CKR_PIN_LEN_RANGE`, `CKR_PIN_EXPIRED`) no login is tried again in this process. The token
/// counts wrong PINs and locks the user PIN after a few; a server retrying the same wrong PIN
/// on every request would lock it within seconds and take every other user of the token down
/// with it. Any other failure (the device is absent or failing while a network HSM restarts, no
/// session can be opened) says nothing about the PIN and is tried again on the next call.
pub struct Pkcs11Token {
    ctx: Pkcs11,
    slot: Slot,
    label: String,
    pin: SecretString,
    pin_setting: &'static str,
    session: Mutex<Session>,
    /// The first re-login whose PIN was refused, returned from then on without asking the token.
    login_refused: Mutex<Option<String>>,
    /// Logins tried after start-up (for tests and the log).
    relogins: std::sync::atomic::AtomicU32,
}

impl fmt::Debug for Pkcs11Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pkcs11Token({})", self.label)
    }
}

impl Pkcs11Token {
    /// Loads the module, finds the token by label, opens a session and logs the user in.
    ///
    /// Errors name the setting at fault: the module cannot be loaded
    /// (`CUSTODIA_MASTER_KEY_PKCS11_MODULE`), no token has the label (`…_TOKEN`), the PIN is
    /// refused or locked (`…_PIN` or `…_PIN_FILE`, never the PIN), or the token does not offer
    /// `CKM_AES_GCM` (`…_MODULE`).
    pub fn open(config: &Pkcs11Config) -> Result<Arc<Pkcs11Token>, CryptoError> {
        assert_off_async_workers("open");
        let ctx = context(&config.module)?;
        let slots = ctx
            .get_slots_with_token()
            .map_err(|e| setting_error(MODULE_SETTING, format!("listing slots failed: {}", rv_name(&e))))?;
        let mut found = Vec::new();
        let mut labels = Vec::new();
        for slot in slots {
            let Ok(info) = ctx.get_token_info(slot) else { continue };
            if info.label() == config.token {
                found.push(slot);
            }
            labels.push(info.label().to_owned());
        }
        let slot = match found.as_slice() {
            [slot] => *slot,
            [] => {
                return Err(setting_error(
                    TOKEN_SETTING,
                    format!(
                        "no token labelled {:?} in {} (tokens present: {:?})",
                        config.token,
                        config.module.display(),
                        labels
                    ),
                ));
            }
            _ => {
                return Err(setting_error(
                    TOKEN_SETTING,
                    format!("{} tokens are labelled {:?}; labels must be unique", found.len(), config.token),
                ));
            }
        };
        // One mechanism asked for by type: listing them all makes `cryptoki` log an error for
        // every vendor mechanism it does not know.
        if let Err(e) = ctx.get_mechanism_info(slot, MechanismType::AES_GCM) {
            return Err(setting_error(
                MODULE_SETTING,
                format!(
                    "token {:?} does not offer CKM_AES_GCM, which the master key needs ({})",
                    config.token,
                    rv_name(&e)
                ),
            ));
        }
        let session = login(&ctx, slot, &config.pin, config.pin_setting).map_err(|e| e.error)?;
        Ok(Arc::new(Pkcs11Token {
            ctx,
            slot,
            label: config.token.clone(),
            pin: config.pin.clone(),
            pin_setting: config.pin_setting,
            session: Mutex::new(session),
            login_refused: Mutex::new(None),
            relogins: std::sync::atomic::AtomicU32::new(0),
        }))
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Generates an AES-256 master key in the token under `label`: `CKA_TOKEN` (persistent),
    /// `CKA_PRIVATE`, `CKA_SENSITIVE`, not `CKA_EXTRACTABLE`, usable only to encrypt and
    /// decrypt, with a random 16-byte `CKA_ID`. Refuses if a secret key with `label` exists.
    /// Returns the key's id.
    pub fn generate_key(self: &Arc<Self>, label: &str) -> Result<KeyId, CryptoError> {
        assert_off_async_workers("generate_key");
        let session = self.session();
        let existing = find_keys(&session, label).map_err(|e| {
            setting_error(KEY_SETTING, format!("searching the token failed: {}", rv_name(&e)))
        })?;
        if !existing.is_empty() {
            return Err(setting_error(
                KEY_SETTING,
                format!("token {:?} already holds a secret key labelled {label:?}", self.label),
            ));
        }
        let mut id = vec![0u8; GENERATED_ID_LEN];
        fill_random(&mut id)?;
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.clone()),
        ];
        session
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(|e| setting_error(KEY_SETTING, format!("generating the key failed: {}", rv_name(&e))))?;
        Ok(key_id(label, &id))
    }

    /// The secret key labelled `label`, checked: AES, 32 bytes, sensitive, not extractable,
    /// allowed to encrypt and decrypt, with a `CKA_ID`. An error names
    /// `CUSTODIA_MASTER_KEY_PKCS11_KEY` (or, for a previous key, the entry) and what is wrong.
    pub fn key(self: &Arc<Self>, label: &str, setting: &'static str) -> Result<Pkcs11Key, CryptoError> {
        assert_off_async_workers("key");
        let session = self.session();
        let (handle, id) = checked_key(&session, label, &self.label, setting)?;
        drop(session);
        Ok(Pkcs11Key {
            token: Arc::clone(self),
            label: label.to_owned(),
            ck_id: id,
            handle: Mutex::new(handle),
        })
    }

    fn session(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces a session the token dropped with a new, logged-in one. Once the token has
    /// refused the PIN, later calls return that refusal without asking the token (see the
    /// type's invariant); other failures are returned and tried again on the next call.
    fn reconnect(&self, session: &mut Session) -> Result<(), CryptoError> {
        let mut refused = self.login_refused.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(message) = refused.as_ref() {
            return Err(CryptoError::Pkcs11(message.clone()));
        }
        self.relogins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match login(&self.ctx, self.slot, &self.pin, self.pin_setting) {
            Ok(new) => {
                *session = new;
                Ok(())
            }
            Err(LoginError { error, pin_refused: false }) => {
                tracing::warn!(token = %self.label, error = %error, "PKCS#11 login failed; tried again on the next call");
                Err(error)
            }
            Err(LoginError { error, pin_refused: true }) => {
                let reason = match error {
                    CryptoError::Pkcs11(reason) => reason,
                    other => other.to_string(),
                };
                let message = format!(
                    "{reason}; logging in again after the token dropped the session was refused, and no \
                     further login is tried (a wrong PIN retried would lock it): correct {} and restart",
                    self.pin_setting
                );
                tracing::error!(token = %self.label, error = %message, "PKCS#11 login refused");
                *refused = Some(message.clone());
                Err(CryptoError::Pkcs11(message))
            }
        }
    }

    /// How many logins were tried after start-up.
    pub fn relogins(&self) -> u32 {
        self.relogins.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A failed login, and whether the token refused the PIN itself (retrying it could lock it).
struct LoginError {
    error: CryptoError,
    pin_refused: bool,
}

fn login(
    ctx: &Pkcs11,
    slot: Slot,
    pin: &SecretString,
    pin_setting: &'static str,
) -> Result<Session, LoginError> {
    let other = |error| LoginError { error, pin_refused: false };
    let refused = |message| LoginError { error: setting_error(pin_setting, message), pin_refused: true };
    // Read-write: `keys hsm-generate` creates a token object; serving only encrypts and decrypts.
    let session = ctx.open_rw_session(slot).map_err(|e| {
        other(setting_error(TOKEN_SETTING, format!("opening a session failed: {}", rv_name(&e))))
    })?;
    match session.login(UserType::User, Some(pin)) {
        // Login state is per application and token: another session of this process may have
        // logged in already.
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
            Err(refused("the token refused the PIN (CKR_PIN_INCORRECT)"))
        }
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(refused(
            "the user PIN is locked after too many wrong attempts (CKR_PIN_LOCKED); the security officer must reset it",
        )),
        Err(CkError::Pkcs11(RvError::PinLenRange, _)) => {
            Err(refused("the PIN has a length the token does not accept (CKR_PIN_LEN_RANGE)"))
        }
        Err(CkError::Pkcs11(RvError::PinExpired, _)) => {
            Err(refused("the user PIN has expired (CKR_PIN_EXPIRED); set a new one on the token"))
        }
        Err(e) => Err(other(setting_error(pin_setting, format!("logging in failed: {}", rv_name(&e))))),
    }
}

fn find_keys(session: &Session, label: &str) -> cryptoki::error::Result<Vec<ObjectHandle>> {
    session.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ])
}

/// Finds the key labelled `label` and checks its attributes; returns its handle and `CKA_ID`.
fn checked_key(
    session: &Session,
    label: &str,
    token: &str,
    setting: &'static str,
) -> Result<(ObjectHandle, Vec<u8>), CryptoError> {
    let fail = |message: String| setting_error(setting, message);
    let handles = find_keys(session, label)
        .map_err(|e| fail(format!("searching the token failed: {}", rv_name(&e))))?;
    let handle = match handles.as_slice() {
        [h] => *h,
        [] => {
            return Err(fail(format!(
                "no secret key labelled {label:?} in token {token:?} (create one with `custodia keys hsm-generate`)"
            )));
        }
        _ => {
            return Err(fail(format!(
                "{} secret keys are labelled {label:?}; labels must be unique",
                handles.len()
            )));
        }
    };
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::KeyType,
                AttributeType::ValueLen,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Encrypt,
                AttributeType::Decrypt,
                AttributeType::Id,
            ],
        )
        .map_err(|e| fail(format!("reading the key's attributes failed: {}", rv_name(&e))))?;
    let (mut aes, mut len, mut sensitive, mut extractable) = (false, 0usize, false, true);
    let (mut encrypt, mut decrypt, mut id) = (false, false, Vec::new());
    for a in attrs {
        match a {
            Attribute::KeyType(t) => aes = t == KeyType::AES,
            Attribute::ValueLen(n) => len = usize::from(n),
            Attribute::Sensitive(b) => sensitive = b,
            Attribute::Extractable(b) => extractable = b,
            Attribute::Encrypt(b) => encrypt = b,
            Attribute::Decrypt(b) => decrypt = b,
            Attribute::Id(bytes) => id = bytes,
            _ => {}
        }
    }
    if !aes || len != 32 {
        return Err(fail(format!("the key labelled {label:?} is not an AES-256 key")));
    }
    if !sensitive || extractable {
        return Err(fail(format!(
            "the key labelled {label:?} could leave the token (CKA_SENSITIVE must be true and CKA_EXTRACTABLE false); \
             create one with `custodia keys hsm-generate`"
        )));
    }
    if !encrypt || !decrypt {
        return Err(fail(format!("the key labelled {label:?} is not allowed to encrypt and decrypt")));
    }
    if id.is_empty() {
        return Err(fail(format!(
            "the key labelled {label:?} has no CKA_ID, from which its id is derived; give it a random one \
             (keys made by `custodia keys hsm-generate` have one)"
        )));
    }
    Ok((handle, id))
}

/// The id of the token key with `label` and `CKA_ID` `ck_id` (see the module docs).
fn key_id(label: &str, ck_id: &[u8]) -> KeyId {
    let label_len = (label.len() as u32).to_be_bytes();
    let id_len = (ck_id.len() as u32).to_be_bytes();
    let digest =
        super::sha256(&[b"custodia/pkcs11-master-key-id/v1\0", &label_len, label.as_bytes(), &id_len, ck_id]);
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&digest[..8]);
    KeyId::from_raw(MASTER_PREFIX, &raw)
}

/// A master key held by a token: only its handle is known here.
pub struct Pkcs11Key {
    token: Arc<Pkcs11Token>,
    label: String,
    ck_id: Vec<u8>,
    handle: Mutex<ObjectHandle>,
}

impl fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pkcs11Key({} in {})", self.label, self.token.label)
    }
}

impl Pkcs11Key {
    /// This key's id (see the module docs).
    pub(super) fn id(&self) -> KeyId {
        key_id(&self.label, &self.ck_id)
    }

    /// Where the key lives, for logs: token and key label.
    pub(super) fn describe(&self) -> String {
        format!("PKCS#11 token {:?}, key {:?}", self.token.label, self.label)
    }

    /// AES-256-GCM encryption in the token: `ciphertext ‖ tag`.
    pub(super) fn encrypt(
        &self,
        nonce: &[u8; 12],
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.run(|session, handle| {
            let mut iv = *nonce;
            let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())?;
            session.encrypt(&Mechanism::AesGcm(params), handle, plaintext)
        })
    }

    /// AES-256-GCM decryption in the token of `ciphertext ‖ tag`; [`CryptoError::Open`] when the
    /// tag does not verify.
    pub(super) fn decrypt(
        &self,
        nonce: &[u8; 12],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.run(|session, handle| {
            let mut iv = *nonce;
            let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())?;
            session.decrypt(&Mechanism::AesGcm(params), handle, ciphertext).map(Zeroizing::new)
        })
    }

    /// Runs `op` on the held session; if the token lost the session or the login (a restart of
    /// the HSM, a network HSM's reconnect), logs in again, finds the key again and retries once.
    fn run<T>(
        &self,
        op: impl Fn(&Session, ObjectHandle) -> cryptoki::error::Result<T>,
    ) -> Result<T, CryptoError> {
        assert_off_async_workers("encrypt or decrypt");
        let mut session = self.token.session();
        let mut handle = self.handle.lock().unwrap_or_else(|e| e.into_inner());
        match op(&session, *handle) {
            Ok(out) => return Ok(out),
            Err(e) if !reconnectable(&e) => return Err(self.op_error(&e)),
            Err(e) => {
                tracing::warn!(token = %self.token.label, error = %rv_name(&e), "PKCS#11 session lost; logging in again")
            }
        }
        self.token.reconnect(&mut session)?;
        let (found, id) = checked_key(&session, &self.label, &self.token.label, KEY_SETTING)?;
        if id != self.ck_id {
            return Err(setting_error(
                KEY_SETTING,
                format!("the key labelled {:?} was replaced", self.label),
            ));
        }
        *handle = found;
        op(&session, *handle).map_err(|e| self.op_error(&e))
    }

    fn op_error(&self, e: &CkError) -> CryptoError {
        match e {
            // A tag that does not verify: the same opaque failure as the software path.
            CkError::Pkcs11(RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange, _) => {
                CryptoError::Open
            }
            other => {
                let message =
                    format!("token {:?}, key {:?}: {}", self.token.label, self.label, rv_name(other));
                // Logged here as well: a caller may fold this into a coarser error.
                tracing::error!(error = %message, "a PKCS#11 operation failed");
                CryptoError::Pkcs11(message)
            }
        }
    }
}

fn reconnectable(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid,
            _
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_depend_on_label_and_cka_id_and_look_like_master_ids() {
        let a = key_id("custodia-master", &[1; 16]);
        assert_eq!(a, key_id("custodia-master", &[1; 16]));
        assert_ne!(a, key_id("custodia-master", &[2; 16]));
        assert_ne!(a, key_id("custodia-master-2", &[1; 16]));
        // Length prefixes: moving a byte from the label into the id changes the id.
        assert_ne!(key_id("ab", b"c"), key_id("a", b"bc"));
        assert!(a.as_str().starts_with("mk-") && a.raw(MASTER_PREFIX).is_some());
    }

    #[test]
    fn the_config_does_not_print_the_pin() {
        let config = Pkcs11Config {
            module: "/usr/lib/softhsm/libsofthsm2.so".into(),
            token: "custodia".into(),
            pin: SecretString::from("8765-secret-pin"),
            pin_setting: PIN_SETTING,
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("8765") && printed.contains("[redacted]"), "{printed}");
    }

    const RELOGIN_TEST: &str = "crypto::pkcs11::tests::a_refused_re_login_is_not_tried_again";
    // The same test also checks that a login failure other than a refused PIN is retried.
    const CHILD: &str = "CUSTODIA_PKCS11_TEST_CHILD";

    /// A re-login that fails for a reason other than the PIN (here: the security officer is
    /// logged in) is tried again on the next call; a re-login with a PIN the token refuses (here:
    /// the PIN was changed on the token, then the session was lost) fails with an error naming
    /// the setting, and is never tried again.
    /// SoftHSM2 reads `SOFTHSM2_CONF` once per process and this process's environment cannot be
    /// changed safely, so the work runs in a child process of this test binary.
    #[test]
    fn a_refused_re_login_is_not_tried_again() {
        if std::env::var_os(CHILD).is_some() {
            return relogin_child();
        }
        let module = std::env::var_os("CUSTODIA_TEST_PKCS11_MODULE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
        let util = std::process::Command::new("softhsm2-util").arg("--version").output();
        if !(util.is_ok_and(|o| o.status.success()) && module.exists()) {
            let required = std::env::var_os("CI").is_some()
                || std::env::var("CUSTODIA_REQUIRE_HSM").is_ok_and(|v| v == "1");
            assert!(!required, "SoftHSM2 is required here but missing; apt-get install softhsm2");
            println!("SKIPPED {RELOGIN_TEST}: SoftHSM2 is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(&conf, format!("directories.tokendir = {}\nlog.level = ERROR\n", tokens.display()))
            .unwrap();
        let init = std::process::Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(["--init-token", "--free", "--label", "unit", "--pin", "1234-right", "--so-pin", "so-9999"])
            .output()
            .unwrap();
        assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", RELOGIN_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .env("SOFTHSM2_CONF", &conf)
            .env("CUSTODIA_TEST_PKCS11_MODULE", &module)
            .output()
            .unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
    }

    fn relogin_child() {
        let module = PathBuf::from(std::env::var_os("CUSTODIA_TEST_PKCS11_MODULE").unwrap());
        let config = Pkcs11Config {
            module,
            token: "unit".into(),
            pin: SecretString::from("1234-right"),
            pin_setting: PIN_FILE_SETTING,
        };
        let token = Pkcs11Token::open(&config).unwrap();
        token.generate_key("k").unwrap();
        let key = token.key("k", KEY_SETTING).unwrap();
        let nonce = [7u8; 12];
        let sealed = key.encrypt(&nonce, b"an epoch key", b"aad").unwrap();
        assert_eq!(key.decrypt(&nonce, &sealed, b"aad").unwrap().as_slice(), b"an epoch key");
        // An epoch-key file whose epoch key is wrapped under the token key.
        let dir = tempfile::tempdir().unwrap();
        let epochs = dir.path().join("epochs");
        let keyring = |missing| {
            let master = super::super::MasterKey::from_pkcs11(&token, "k", KEY_SETTING).unwrap();
            let ring = super::super::MasterKeyring::new(master, vec![]);
            let epochs = epochs.clone();
            move || super::super::DataKeyring::open(ring, &epochs, missing, 1_000).map(|_| ())
        };
        keyring(super::super::MissingFile::Create)().unwrap();
        let reopen = keyring(super::super::MissingFile::Refuse);
        {
            // A login failure that is not about the PIN: the security officer is logged in (the
            // token refuses a user login beside it), as a device that is briefly unavailable.
            let so = token.ctx.open_rw_session(token.slot).unwrap();
            token.session().logout().unwrap();
            so.login(UserType::So, Some(&SecretString::from("so-9999"))).unwrap();
            let err = key.decrypt(&nonce, &sealed, b"aad").unwrap_err().to_string();
            assert!(err.contains("UserAnotherAlreadyLoggedIn") && !err.contains("no further login"), "{err}");
            so.logout().unwrap();
            drop(so);
            // Not remembered: the next call logs in again and works.
            assert_eq!(key.decrypt(&nonce, &sealed, b"aad").unwrap().as_slice(), b"an epoch key");
            assert_eq!(token.relogins(), 2, "the failed login and the one after it");
        }
        {
            // The PIN is changed on the token (the configured one is now wrong), and the
            // session is lost (as when the HSM restarts).
            let session = token.session();
            session.set_pin(&SecretString::from("1234-right"), &SecretString::from("5678-new")).unwrap();
            session.logout().unwrap();
        }
        // The token cannot be used: opening the epoch-key file says so, not that it was altered.
        let outage = reopen().unwrap_err().to_string();
        assert!(outage.contains("could not be used") && outage.contains(PIN_FILE_SETTING), "{outage}");
        assert!(!outage.contains("altered"), "{outage}");
        let err = key.decrypt(&nonce, &sealed, b"aad").unwrap_err().to_string();
        assert!(err.contains(PIN_FILE_SETTING) && err.contains("CKR_PIN_INCORRECT"), "{err}");
        assert!(err.contains("no further login"), "{err}");
        assert!(!err.contains("1234") && !err.contains("5678"), "a PIN leaked: {err}");
        for _ in 0..5 {
            let again = key.decrypt(&nonce, &sealed, b"aad").unwrap_err().to_string();
            assert_eq!(again, err, "the same refusal, without asking the token");
        }
        assert_eq!(token.relogins(), 3, "a refused PIN is never tried again");
    }

    #[test]
    fn a_module_that_does_not_exist_is_an_error_naming_the_setting() {
        let config = Pkcs11Config {
            module: "/nonexistent/libpkcs11.so".into(),
            token: "custodia".into(),
            pin: SecretString::from("1234"),
            pin_setting: PIN_SETTING,
        };
        let err = Pkcs11Token::open(&config).unwrap_err().to_string();
        assert!(err.contains(MODULE_SETTING) && err.contains("/nonexistent/libpkcs11.so"), "{err}");
        assert!(!err.contains("1234"), "{err}");
    }
}
