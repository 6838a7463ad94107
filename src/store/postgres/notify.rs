//! Integration notices: after each batch the sequencer sends `NOTIFY` on a channel of the
//! schema (in the batch's transaction, so it is delivered at its commit), and every node keeps
//! one listening session that wakes its waiters (writers that need their seqs, log readers
//! waiting for what was committed before them). Waiters still poll, every [`SEQ_POLL`] while
//! this session is down and every [`SEQ_POLL_LISTENING`] while it is up (a lost notice costs
//! at most that), so a dropped session degrades to the polling it replaces.
//!
//! [`SEQ_POLL`]: super::SEQ_POLL

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_postgres::AsyncMessage;

use super::{Shared, db_error};
use crate::store::StoreError;

/// The schema's channel name (an identifier of at most 63 bytes whatever the schema's name).
pub(super) const CHANNEL: &str =
    "'custodia_seq_' || pg_catalog.left(pg_catalog.md5(coalesce(pg_catalog.current_schema()::text, '')), 16)";
/// How often waiters look anyway while the listening session is up.
pub(super) const SEQ_POLL_LISTENING: Duration = Duration::from_millis(250);
/// How long a node waits before listening again after its session dropped.
const RELISTEN: Duration = Duration::from_secs(1);

/// Keeps a listening session until the store is closed or dropped.
pub(super) async fn run(shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        match listen(&shared, &mut stop).await {
            Ok(()) => return,
            Err(e) => {
                shared.listening.store(false, Ordering::Release);
                tracing::debug!(error = %e, "integration notices: listening session ended; polling until it is back");
            }
        }
        tokio::select! {
            _ = stop.changed() => {}
            () = tokio::time::sleep(RELISTEN) => {}
        }
    }
}

/// Listens until stopped (`Ok`) or the session fails.
async fn listen(shared: &Shared, stop: &mut watch::Receiver<bool>) -> Result<(), StoreError> {
    let (client, mut connection) =
        shared.connector.config.connect(shared.connector.tls.clone()).await.map_err(db_error)?;
    let (notices, mut received) = mpsc::unbounded_channel::<()>();
    // The connection's driver: polling for messages also runs the session's queries.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    if notices.send(()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    let result = async {
        // Set up as every other session (pinned search_path, limits; connect.rs).
        super::connect::set_up(&client, &shared.connector.limits, super::connect::Session::Plain).await?;
        let channel: String =
            client.query_one(&format!("SELECT {CHANNEL}"), &[]).await.map_err(db_error)?.get(0);
        client.batch_execute(&format!("LISTEN {channel}")).await.map_err(db_error)?;
        shared.listening.store(true, Ordering::Release);
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    if *stop.borrow() {
                        return Ok(());
                    }
                }
                notice = received.recv() => match notice {
                    Some(()) => shared.integrated.notify_waiters(),
                    None => return Err(StoreError::Unavailable("the listening session ended".into())),
                },
            }
        }
    }
    .await;
    shared.listening.store(false, Ordering::Release);
    driver.abort();
    result
}
