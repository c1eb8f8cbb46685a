//! One explicit stop signal, passed to every task (SIGTERM/SIGINT set it).

use tokio::sync::watch;

/// Cloneable handle: ask whether to stop, or wait until told to.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The sending half, held by whoever decides to stop.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// A new signal, not yet triggered.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    /// Tell every holder of a [`Shutdown`] to stop.
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    /// A new receiving handle.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    /// Has the stop been requested?
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Wait until the stop is requested (returns at once if it already was).
    pub async fn wait(&mut self) {
        while !*self.rx.borrow_and_update() {
            if self.rx.changed().await.is_err() {
                // The trigger is gone: nobody can ask us to stop any more, so never return.
                std::future::pending::<()>().await;
            }
        }
    }

    /// A handle that is never triggered (for tools like `balp-agent test`).
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        Shutdown { rx }
    }
}
