//! Runs an [`EventHubsForwarder`] (and with it every task the SDK spawns: the AMQP
//! connection and session engines) on a dedicated OS thread with a single-threaded tokio
//! runtime, and hands it work over a channel.
//!
//! Why: in fe2o3-amqp 0.16.2 (the AMQP engine under `azure_core_amqp` 1.2.0-beta.1) a sender
//! hands a transfer to the session engine *before* it registers the delivery in its unsettled
//! map (`SenderLink::send_payload_with_transfer`). On a multi-threaded runtime the session
//! engine, on another worker thread, can receive the peer's settled disposition in that window;
//! it finds no entry, drops the disposition, and the send then waits for an outcome that never
//! comes, until our send timeout rebuilds the client (a 30 s stall and a duplicate batch). On
//! a current-thread runtime no other task runs between the hand-over and the registration (the
//! sender does not yield in between), so the disposition is always matched. See
//! `docs/eventhubs.md` ("The AMQP engine runs on its own thread") for the evidence.
//!
//! Invariants: one command at a time, in order; a `send` answers with exactly what
//! [`EventHubsForwarder::send`] returned; dropping the handle ends the thread after the
//! command in progress (the client is dropped with it). If the thread is gone, `send` answers
//! a transient [`ForwardErrorKind::Other`] error, never panics.

use super::config::EventHubsConfig;
use super::forwarder::{EventHubsForwarder, ForwardError, ForwardErrorKind, SendReport};
use super::payload::OutEvent;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

enum Command {
    Send(
        Vec<OutEvent>,
        oneshot::Sender<Result<SendReport, ForwardError>>,
    ),
    Close(oneshot::Sender<Result<(), ForwardError>>),
}

/// What the thread publishes after each command.
#[derive(Default)]
struct State {
    rebuilds_total: AtomicU64,
    connected: AtomicBool,
}

/// An [`EventHubsForwarder`] living on its own single-threaded runtime.
pub struct PinnedForwarder {
    commands: mpsc::Sender<Command>,
    state: Arc<State>,
}

impl std::fmt::Debug for PinnedForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedForwarder")
            .field("connected", &self.is_connected())
            .field("rebuilds_total", &self.rebuilds_total())
            .finish_non_exhaustive()
    }
}

fn gone() -> ForwardError {
    ForwardError {
        kind: ForwardErrorKind::Other,
        detail: "the event hubs forwarder thread is gone".to_string(),
        condition: None,
        partial: SendReport::default(),
    }
}

impl PinnedForwarder {
    /// Validates `config` (as [`EventHubsForwarder::new`]) and starts the thread, named
    /// `eventhubs-<name>`. No network I/O: the client opens on the first `send`.
    pub fn start(name: &str, config: EventHubsConfig) -> Result<Self, ForwardError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ForwardError {
                kind: ForwardErrorKind::Config,
                detail: format!("starting the event hubs runtime: {e}"),
                condition: None,
                partial: SendReport::default(),
            })?;
        // Credentials are built inside the forwarder's own runtime, where they will run.
        let forwarder = {
            let _inside = runtime.enter();
            EventHubsForwarder::new(config)?
        };
        let (commands, rx) = mpsc::channel(1);
        let state = Arc::new(State::default());
        let published = state.clone();
        std::thread::Builder::new()
            .name(format!("eventhubs-{name}"))
            .spawn(move || runtime.block_on(serve(forwarder, rx, published)))
            .map_err(|e| ForwardError {
                kind: ForwardErrorKind::Config,
                detail: format!("starting the event hubs thread: {e}"),
                condition: None,
                partial: SendReport::default(),
            })?;
        Ok(PinnedForwarder { commands, state })
    }

    /// Sends `events` on the forwarder's thread; see [`EventHubsForwarder::send`].
    pub async fn send(&self, events: Vec<OutEvent>) -> Result<SendReport, ForwardError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Send(events, reply))
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Closes the client (see [`EventHubsForwarder::close`]) and ends the thread.
    pub async fn close(self) -> Result<(), ForwardError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Close(reply))
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Clients rebuilt since the start (after a send timeout or a connection error).
    pub fn rebuilds_total(&self) -> u64 {
        self.state.rebuilds_total.load(Ordering::Relaxed)
    }

    /// Whether a client was open after the last command.
    pub fn is_connected(&self) -> bool {
        self.state.connected.load(Ordering::Relaxed)
    }
}

async fn serve(
    mut forwarder: EventHubsForwarder,
    mut commands: mpsc::Receiver<Command>,
    state: Arc<State>,
) {
    while let Some(command) = commands.recv().await {
        match command {
            Command::Send(events, reply) => {
                let result = forwarder.send(events).await;
                state
                    .rebuilds_total
                    .store(forwarder.rebuilds_total(), Ordering::Relaxed);
                state
                    .connected
                    .store(forwarder.is_connected(), Ordering::Relaxed);
                // The caller may have gone (shutdown); the result is then moot.
                reply.send(result).ok();
            }
            Command::Close(reply) => {
                let result = forwarder.close().await;
                state.connected.store(false, Ordering::Relaxed);
                reply.send(result).ok();
                return;
            }
        }
    }
}
