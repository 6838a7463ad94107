//! The listener: TLS with certificates made in the test (rcgen), mutual TLS, a certificate
//! reload on SIGHUP under an open connection, start-up errors that name the file, the refusal of
//! plain HTTP on a non-loopback address, and limits a slow client cannot get around.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use custodia::config::Settings;
use custodia::startup::App;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

use crate::helpers::{ServerProcess, TestApp, spawn_app_with, test_settings};

/// A CA and the PEM files of certificates it issued, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Pki { dir: tempfile::tempdir().unwrap(), ca_pem, issuer: Issuer::new(params, key) }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues a certificate and writes `<name>.crt` and `<name>.key`; `adjust` changes the
    /// parameters (validity, usages) first.
    fn issue(
        &self,
        name: &str,
        server: bool,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (crt, pem_key) = (self.path(&format!("{name}.crt")), self.path(&format!("{name}.key")));
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&pem_key, key.serialize_pem()).unwrap();
        (crt, pem_key)
    }

    /// A CRL of this CA revoking `serials`, as PEM text and as DER bytes.
    fn crl(&self, serials: &[u64]) -> (String, Vec<u8>) {
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(serials.len() as u64 + 1),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*serial),
                    revocation_time: rcgen::date_time_ymd(2024, 6, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap();
        (crl.pem().unwrap(), crl.der().to_vec())
    }

    fn ca_file(&self) -> PathBuf {
        let path = self.path("ca.crt");
        std::fs::write(&path, &self.ca_pem).unwrap();
        path
    }

    /// A client that trusts only this CA.
    fn client(&self, identity: Option<(&Path, &Path)>) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap()]);
        if let Some((crt, key)) = identity {
            let mut pem = std::fs::read(crt).unwrap();
            pem.extend(std::fs::read(key).unwrap());
            builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        builder.build().unwrap()
    }

    /// A raw TLS client config trusting this CA (to look at the served certificate).
    fn rustls_client(&self) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

fn with_tls(s: &mut Settings, (cert, key): &(PathBuf, PathBuf)) {
    s.tls_cert = Some(cert.clone());
    s.tls_key = Some(key.clone());
}

/// A server with a certificate from `pki` that requires client certificates from `pki`'s CA;
/// also answers the CA file.
async fn spawn_mutual_tls_app(pki: &Pki) -> (TestApp, PathBuf) {
    let server = pki.issue("server", true, |_| {});
    let ca = pki.ca_file();
    let app = spawn_app_with(|s| {
        with_tls(s, &server);
        s.tls_client_ca = Some(ca.clone());
    })
    .await;
    (app, ca)
}

#[tokio::test]
async fn https_serves_http2_and_http1_and_a_plain_request_to_the_tls_port_fails_cleanly() {
    let pki = Pki::new();
    let files = pki.issue("server", true, |_| {});
    let app = spawn_app_with(|s| with_tls(s, &files)).await;
    assert!(app.base.starts_with("https://"), "{}", app.base);
    let client = pki.client(None);
    let res = client.get(format!("{}/healthz", app.base)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), reqwest::Version::HTTP_2, "ALPN offers h2 first");
    let http1 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap()])
        .http1_only()
        .build()
        .unwrap();
    assert_eq!(
        http1.get(format!("{}/healthz", app.base)).send().await.unwrap().version(),
        reqwest::Version::HTTP_11
    );

    let plain = app.base.replacen("https://", "http://", 1);
    assert!(reqwest::get(format!("{plain}/healthz")).await.is_err(), "plain HTTP must not be answered");
    // A client that does not trust the certificate is refused too.
    assert!(reqwest::get(format!("{}/healthz", app.base)).await.is_err());
    let res = client.get(format!("{}/healthz", app.base)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "the listener still serves after bad clients");
}

#[tokio::test]
async fn unusable_certificate_files_are_start_up_errors_naming_the_file() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let build = |adjust: &dyn Fn(&mut Settings)| {
        let mut settings = test_settings(dir.path());
        adjust(&mut settings);
        App::build(settings)
    };
    let expired = pki.issue("expired", true, |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let err =
        build(&|s| with_tls(s, &expired)).await.err().expect("an expired certificate is refused").to_string();
    assert!(err.contains("expired") && err.contains(&expired.0.display().to_string()), "{err}");

    let (cert, _) = pki.issue("one", true, |_| {});
    let (_, other_key) = pki.issue("two", true, |_| {});
    let err = build(&|s| with_tls(s, &(cert.clone(), other_key.clone())))
        .await
        .err()
        .expect("mismatch")
        .to_string();
    assert!(err.contains(&other_key.display().to_string()) && err.contains("does not fit"), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "no key material in the message: {err}");

    let missing = pki.path("missing.crt");
    let err = build(&|s| with_tls(s, &(missing.clone(), other_key.clone()))).await.err().unwrap().to_string();
    assert!(err.contains(&missing.display().to_string()), "{err}");

    let err = build(&|s| s.tls_cert = Some(cert.clone())).await.err().unwrap().to_string();
    assert!(err.contains("CUSTODIA_TLS_KEY"), "half a pair names the other half: {err}");
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_ca() {
    let pki = Pki::new();
    let (app, _) = spawn_mutual_tls_app(&pki).await;
    let url = format!("{}/healthz", app.base);
    assert!(pki.client(None).get(&url).send().await.is_err(), "no client certificate");

    let stranger = Pki::new();
    let (crt, key) = stranger.issue("client", false, |_| {});
    let foreign = {
        let mut pem = std::fs::read(&crt).unwrap();
        pem.extend(std::fs::read(&key).unwrap());
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap()])
            .identity(reqwest::Identity::from_pem(&pem).unwrap())
            .build()
            .unwrap()
    };
    assert!(foreign.get(&url).send().await.is_err(), "a certificate from another CA");

    let (crt, key) = pki.issue("client", false, |_| {});
    let res = pki.client(Some((&crt, &key))).get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// The serial number of the certificate a new TLS connection to `addr` is served.
async fn served_serial(config: &Arc<rustls::ClientConfig>, addr: &str) -> Vec<u8> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, stream).await.unwrap();
    serial(&tls)
}

fn serial(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    cert.raw_serial().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_while_a_request_on_an_old_connection_completes() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("server", true, |_| {});
    let data_dir = tempfile::tempdir().unwrap();
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let server = ServerProcess::start(
        data_dir.path(),
        &[("CUSTODIA_TLS_CERT", &cert_s), ("CUSTODIA_TLS_KEY", &key_s)],
    );
    let addr = server.base.trim_start_matches("https://").to_owned();
    let config = pki.rustls_client();

    // An old connection, half-way through a request when the certificate changes.
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut old = tokio_rustls::TlsConnector::from(Arc::clone(&config)).connect(name, stream).await.unwrap();
    let first = serial(&old);
    old.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();

    // A renewed certificate (same key is not required) is written over the files.
    let renewed = pki.issue("renewed", true, |_| {});
    std::fs::copy(&renewed.0, &cert).unwrap();
    std::fs::copy(&renewed.1, &key).unwrap();
    let _ = std::process::Command::new("kill").arg("-HUP").arg(server.child.id().to_string()).status();
    let mut swapped = false;
    for _ in 0..100 {
        if served_serial(&config, &addr).await != first {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(swapped, "new connections get the renewed certificate after SIGHUP");

    old.write_all(b"Connection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    old.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "the old connection's request completes: {answer}");
}

#[tokio::test]
async fn plain_http_on_a_non_loopback_address_needs_the_operators_consent() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.listen = "0.0.0.0:0".into();
    let err = App::build(settings.clone()).await.err().expect("refused").to_string();
    assert!(err.contains("CUSTODIA_ALLOW_PLAINTEXT") && err.contains("CUSTODIA_TLS_CERT"), "{err}");
    settings.allow_plaintext = true;
    let app = App::build(settings).await.expect("allowed with consent");
    assert_eq!(app.mode(), "plain HTTP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_clients_are_cut_off_the_cap_holds_and_a_normal_client_is_served() {
    const CAP: usize = 8;
    let app = spawn_app_with(|s| {
        s.header_read_timeout_ms = 1000;
        s.max_connections = CAP;
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    // Slowloris: many connections that send one header byte every 200 ms and never finish.
    let mut slow = Vec::new();
    for _ in 0..3 * CAP {
        let addr = addr.clone();
        slow.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let started = std::time::Instant::now();
            for byte in b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ".iter().cycle() {
                if stream.write_all(&[*byte]).await.is_err() {
                    return Some(started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                let mut buf = [0u8; 64];
                match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
                    _ => {}
                }
                if started.elapsed() > Duration::from_secs(60) {
                    return None;
                }
            }
            None
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A normal client, queued behind all of them, is answered.
    let res =
        tokio::time::timeout(Duration::from_secs(30), app.client.get(format!("{}/healthz", app.base)).send())
            .await
            .expect("a normal client is served while slow clients come and go")
            .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut cut = Vec::new();
    for task in slow {
        cut.push(task.await.unwrap().expect("a slow client was never cut off"));
    }
    // The cap, seen from outside: a connection is cut no sooner than the header timeout after it
    // was accepted, and past the cap the next one is accepted only when one is cut, so at most
    // CAP connections can be cut within twice the timeout of the clients' start. Without the
    // cap all of them would be cut after about one timeout. (Delays only push cuts later.)
    let early = cut.iter().filter(|t| **t < Duration::from_millis(1900)).count();
    assert!(
        early <= CAP,
        "{early} slow connections were cut within 1.9 s: more than the cap of {CAP} were served at once"
    );
    assert!(
        cut.iter().all(|t| *t >= Duration::from_millis(900)),
        "none is cut before its header timeout: {cut:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_and_half_http2_prefaces_are_closed_and_starve_no_one() {
    const CAP: usize = 4;
    let app = spawn_app_with(|s| {
        s.header_read_timeout_ms = 1000;
        s.max_connections = CAP;
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    // Twice the cap of connections that send nothing, or only the start of the HTTP/2 preface
    // (hyper waits for more bytes before its own header timer starts).
    let mut idle = Vec::new();
    for n in 0..2 * CAP {
        let addr = addr.clone();
        idle.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            if n % 2 == 1 {
                stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
            }
            let mut buf = [0u8; 64];
            // Closed by the server: EOF or a reset, well within the bound.
            matches!(
                tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await,
                Ok(Ok(0)) | Ok(Err(_))
            )
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let res =
        tokio::time::timeout(Duration::from_secs(30), app.client.get(format!("{}/healthz", app.base)).send())
            .await
            .expect("a normal client is served while idle connections hold every slot")
            .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    for task in idle {
        assert!(task.await.unwrap(), "an idle connection was never closed");
    }
}

/// Sends one HTTP/1.1 request for `/healthz` on `stream` (keep-alive) and returns the start of
/// the answer, or `None` when the server closed the connection instead.
async fn http1_healthz(stream: &mut tokio::net::TcpStream) -> Option<String> {
    if stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.is_err() {
        return None;
    }
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Ok(_) => None,
        Err(_) => panic!("the server neither answered nor closed the connection"),
    }
}

/// Whether the server closes `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    matches!(tokio::time::timeout(within, stream.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
}

/// One HTTP/2 GET of `/healthz` on `client`, body read to its end.
async fn h2_healthz(client: &mut h2::client::SendRequest<axum::body::Bytes>) -> StatusCode {
    let request = axum::http::Request::get("/healthz").body(()).unwrap();
    let (response, _) = client.clone().ready().await.unwrap().send_request(request, true).unwrap();
    let response = response.await.unwrap();
    let status = response.status();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_and_keep_alive_connections_are_closed_after_the_idle_timeout_busy_ones_are_not() {
    let app = spawn_app_with(|s| {
        s.idle_timeout_ms = 1000;
        // Far above the idle timeout: what closes the connections below is the idle timeout.
        s.header_read_timeout_ms = 20_000;
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();

    // HTTP/2 (prior knowledge): one request, then no stream; h2 answers the server's PINGs.
    let mut idle = Vec::new();
    for _ in 0..3 {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
        let connection = tokio::spawn(connection);
        assert_eq!(h2_healthz(&mut client).await, StatusCode::OK);
        idle.push((client, connection, std::time::Instant::now()));
    }
    // A busy HTTP/2 connection: a request every 300 ms for 2.5 idle timeouts is never cut.
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut busy, busy_connection) = h2::client::handshake(tcp).await.unwrap();
    let busy_connection = tokio::spawn(busy_connection);
    for _ in 0..8 {
        assert_eq!(h2_healthz(&mut busy).await, StatusCode::OK, "a busy connection is served");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!busy_connection.is_finished(), "a busy HTTP/2 connection was closed");
    for (_client, connection, since) in idle {
        let closed = tokio::time::timeout(Duration::from_secs(10), connection)
            .await
            .expect("an idle HTTP/2 connection was never closed")
            .unwrap();
        // A GOAWAY then the end of the connection: h2 reports a clean end.
        assert!(closed.is_ok(), "the idle connection ended without a clean GOAWAY: {closed:?}");
        assert!(since.elapsed() >= Duration::from_millis(900), "closed before the idle timeout");
    }

    // HTTP/1.1 keep-alive obeys the same setting (its header timeout is 20 s here).
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(http1_healthz(&mut stream).await.unwrap().starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut stream, Duration::from_secs(10)).await, "an idle keep-alive was never closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_per_address_cap_are_closed_while_other_addresses_are_served() {
    const CAP: usize = 3;
    let app = spawn_app_with(|s| s.max_connections_per_address = CAP).await;
    let addr: std::net::SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let from = |ip: &str| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        socket.connect(addr)
    };
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut stream = from("127.0.0.1").await.unwrap();
        assert!(http1_healthz(&mut stream).await.unwrap().starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    // One more from the same address: accepted by the kernel, closed at once by the server.
    let mut extra = from("127.0.0.1").await.unwrap();
    assert!(http1_healthz(&mut extra).await.is_none(), "a connection past the per-address cap was served");
    // Another address (Linux routes all of 127/8 to lo) is served meanwhile.
    let mut other = from("127.0.0.2").await.unwrap();
    assert!(http1_healthz(&mut other).await.unwrap().starts_with("HTTP/1.1 200"));
    // The held connections are still served, and one closing frees a place.
    assert!(http1_healthz(&mut held[0]).await.unwrap().starts_with("HTTP/1.1 200"));
    drop(held.pop());
    let mut served = false;
    for _ in 0..50 {
        let mut stream = from("127.0.0.1").await.unwrap();
        if http1_healthz(&mut stream).await.is_some_and(|a| a.starts_with("HTTP/1.1 200")) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "a place freed by a closed connection is given again");
}

#[tokio::test]
async fn an_expired_certificate_anywhere_in_the_chain_is_a_start_up_error_naming_it() {
    let pki = Pki::new();
    // An intermediate CA, expired, that issued a valid server certificate.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.distinguished_name.push(rcgen::DnType::CommonName, "Old Issuing CA");
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let intermediate_pem = params.signed_by(&key, &pki.issuer).unwrap().pem();
    let intermediate = Issuer::new(params, key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.distinguished_name.push(rcgen::DnType::CommonName, "vault.example");
    let leaf_pem = leaf.signed_by(&leaf_key, &intermediate).unwrap().pem();
    let (cert, key) = (pki.path("chain.crt"), pki.path("chain.key"));
    std::fs::write(&cert, format!("{leaf_pem}{intermediate_pem}")).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    with_tls(&mut settings, &(cert.clone(), key));
    let err = App::build(settings).await.err().expect("an expired intermediate is refused").to_string();
    assert!(
        err.contains(&cert.display().to_string())
            && err.contains("certificate 2")
            && err.contains("Old Issuing CA")
            && err.contains("expired"),
        "{err}"
    );
    assert!(!err.contains("PRIVATE KEY") && !err.contains("BEGIN"), "no key material: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_is_refused_and_a_crl_reload_on_sighup_takes_effect() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("server", true, |_| {});
    let ca = pki.ca_file();
    let serial =
        |n: u64| move |p: &mut CertificateParams| p.serial_number = Some(rcgen::SerialNumber::from(n));
    let (alice_crt, alice_key) = pki.issue("alice", false, serial(1001));
    let (bob_crt, bob_key) = pki.issue("bob", false, serial(1002));
    // First a CRL (DER) that revokes someone else; then a PEM one that revokes alice.
    let crl = pki.path("clients.crl");
    std::fs::write(&crl, pki.crl(&[7]).1).unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let path = |p: &Path| p.display().to_string();
    let server = ServerProcess::start(
        data_dir.path(),
        &[
            ("CUSTODIA_TLS_CERT", &path(&cert)),
            ("CUSTODIA_TLS_KEY", &path(&key)),
            ("CUSTODIA_TLS_CLIENT_CA", &path(&ca)),
            ("CUSTODIA_TLS_CLIENT_CRL", &path(&crl)),
        ],
    );
    let url = format!("{}/healthz", server.base);
    // A new client each time: no connection is reused across the reload.
    let status = |crt: PathBuf, key: PathBuf| {
        let client = pki.client(Some((&crt, &key)));
        let url = url.clone();
        async move { client.get(&url).send().await.map(|r| r.status()).ok() }
    };
    assert_eq!(status(alice_crt.clone(), alice_key.clone()).await, Some(StatusCode::OK));
    assert_eq!(status(bob_crt.clone(), bob_key.clone()).await, Some(StatusCode::OK));

    std::fs::write(&crl, pki.crl(&[7, 1001]).0).unwrap();
    let _ = std::process::Command::new("kill").arg("-HUP").arg(server.child.id().to_string()).status();
    let mut refused = false;
    for _ in 0..100 {
        if status(alice_crt.clone(), alice_key.clone()).await.is_none() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the revoked client is refused after the CRL is reloaded");
    assert_eq!(status(bob_crt, bob_key).await, Some(StatusCode::OK), "another client of the CA is served");
}

#[tokio::test]
async fn a_crl_file_that_is_not_a_crl_is_a_start_up_error_naming_the_setting() {
    let pki = Pki::new();
    let server = pki.issue("server", true, |_| {});
    let not_crl = pki.path("not.crl");
    std::fs::write(&not_crl, "hello").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    with_tls(&mut settings, &server);
    settings.tls_client_ca = Some(pki.ca_file());
    settings.tls_client_crl = vec![not_crl.clone()];
    let err = App::build(settings).await.err().expect("refused").to_string();
    assert!(err.contains("CUSTODIA_TLS_CLIENT_CRL") && err.contains(&not_crl.display().to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_export_presents_a_client_certificate_to_a_mutual_tls_server() {
    let pki = Pki::new();
    let (app, ca) = spawn_mutual_tls_app(&pki).await;
    let (crt, key) = pki.issue("auditor", false, |_| {});
    let token = app.auditor();
    let out = tempfile::tempdir().unwrap();
    let args = |with_identity: bool| {
        let mut args: Vec<String> =
            ["audit", "export", "--url", &app.base, "--ca"].iter().map(|a| (*a).to_owned()).collect();
        args.push(ca.display().to_string());
        args.extend(["--token".to_owned(), token.clone(), "--out".to_owned()]);
        args.push(out.path().display().to_string());
        if with_identity {
            args.extend(["--client-cert".to_owned(), crt.display().to_string(), "--client-key".to_owned()]);
            args.push(key.display().to_string());
        }
        args
    };
    let run = |args: Vec<String>| async move {
        crate::auditor::custodia(&args.iter().map(String::as_str).collect::<Vec<_>>()).await
    };
    let (ok, _, stderr) = run(args(false)).await;
    assert!(!ok, "without a client certificate the server refuses the export");
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
    let (ok, stdout, stderr) = run(args(true)).await;
    assert!(ok, "export with a client certificate: {stdout} {stderr}");
    assert!(out.path().join("events.ndjson").exists() && out.path().join("checkpoint.txt").exists());
}

/// An HTTP/2 connection that asked for a path and never reads the answer: its streams' receive
/// window is 0 and it never opens it, while its task answers the server's PINGs.
struct StalledH2 {
    _client: h2::client::SendRequest<axum::body::Bytes>,
    _response: axum::http::Response<h2::RecvStream>,
    connection: tokio::task::JoinHandle<Result<(), h2::Error>>,
}

async fn stalled_h2(addr: &str) -> StalledH2 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, axum::body::Bytes>(tcp)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    // Any answer with a body: here a 404's JSON. Its head arrives; its body never can.
    let request = axum::http::Request::get("/nope").body(()).unwrap();
    let (response, _) = client.clone().ready().await.unwrap().send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    StalledH2 { _client: client, _response: response, connection }
}

/// Limits small enough for the tests below: a response must be sent within 2 s + 1 s.
fn short_limits(s: &mut Settings) {
    s.idle_timeout_ms = 1000;
    s.header_read_timeout_ms = 1000;
    s.request_timeout_ms = 2000;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_whose_client_never_reads_the_response_are_dropped_and_free_their_slots() {
    const CAP: usize = 4;
    let app = spawn_app_with(|s| {
        short_limits(s);
        s.max_connections = CAP;
        s.max_connections_per_address = 2 * CAP;
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stalled = Vec::new();
    for _ in 0..CAP {
        stalled.push(stalled_h2(&addr).await);
    }
    // Every slot is held by a request that cannot finish; a normal client waits for a slot.
    let res =
        tokio::time::timeout(Duration::from_secs(20), app.client.get(format!("{}/healthz", app.base)).send())
            .await
            .expect("a normal client was never served: stalled responses hold every slot")
            .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    for connection in stalled {
        tokio::time::timeout(Duration::from_secs(10), connection.connection)
            .await
            .expect("a connection whose response was never read stayed open")
            .unwrap()
            .ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_stops_within_its_drain_deadline_while_a_client_never_reads_its_response() {
    let mut app = spawn_app_with(short_limits).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let stalled = stalled_h2(&addr).await;
    tokio::time::timeout(Duration::from_secs(15), app.shutdown())
        .await
        .expect("the server did not stop: the drain waited for a response no one reads");
    assert!(
        stalled.connection.is_finished() || {
            tokio::time::timeout(Duration::from_secs(5), stalled.connection).await.is_ok()
        }
    );
}

/// Sends `GET path` on a keep-alive HTTP/1.1 connection; the start of the answer, or `None`
/// when the connection was closed or reset instead.
async fn http1_get(stream: &mut tokio::net::TcpStream, path: &str) -> Option<String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Ok(_) => None,
        Err(_) => panic!("the server neither answered nor closed the connection"),
    }
}

async fn boom() -> &'static str {
    panic!("a test handler panics on purpose")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_answered_500_and_its_connection_goes_on() {
    // The listener itself, serving a router with a handler that panics (the application's
    // handlers have none to trigger on purpose).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new()
        .route("/boom", axum::routing::get(boom))
        .route("/fine", axum::routing::get(|| async { "fine" }));
    let dir = tempfile::tempdir().unwrap();
    let limits = test_settings(dir.path()).listener_limits();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(custodia::listener::serve(listener, router, limits, None, async move {
        let _ = stopped.await;
    }));
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let answer = http1_get(&mut stream, "/boom").await.expect("the connection was reset instead of answered");
    assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
    assert!(answer.contains("\"internal\"") && !answer.contains("on purpose"), "{answer}");
    let answer = http1_get(&mut stream, "/fine").await.expect("the connection did not survive the panic");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(stream);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), server).await.expect("the listener stops").unwrap();
}
