//! One request's events from the loop thread to the cell: a queue behind an uncontended mutex
//! and the waiting task's waker. A tokio mpsc allocates a 32-slot block per channel, which
//! showed up per request in profiles; most exchanges carry three events.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use super::Out;

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Out>,
    waker: Option<Waker>,
    /// The sending side is gone: once the queue is empty, `recv` returns None.
    closed: bool,
    /// The receiving side is gone: `send` fails.
    abandoned: bool,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(s: &Shared) -> MutexGuard<'_, Inner> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The loop thread's end.
#[derive(Debug)]
pub struct EventTx(Shared);

/// The cell's end.
#[derive(Debug)]
pub struct EventRx(Shared);

pub fn channel() -> (EventTx, EventRx) {
    let inner = Inner {
        queue: VecDeque::with_capacity(4),
        ..Inner::default()
    };
    let s = Arc::new(Mutex::new(inner));
    (EventTx(s.clone()), EventRx(s))
}

impl EventTx {
    /// Queues `ev` and wakes the cell's task; the event back when the cell has given up.
    pub fn send(&self, ev: Out) -> Result<(), Out> {
        let waker = {
            let mut g = lock(&self.0);
            if g.abandoned {
                return Err(ev);
            }
            g.queue.push_back(ev);
            g.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl Drop for EventTx {
    fn drop(&mut self) {
        let waker = {
            let mut g = lock(&self.0);
            g.closed = true;
            g.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl EventRx {
    /// The next event, or None once the sender is gone and everything was taken.
    pub async fn recv(&mut self) -> Option<Out> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Out>> {
        let mut g = lock(&self.0);
        if let Some(ev) = g.queue.pop_front() {
            return Poll::Ready(Some(ev));
        }
        if g.closed {
            return Poll::Ready(None);
        }
        match &g.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => g.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// An event already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Out> {
        lock(&self.0).queue.pop_front()
    }
}

impl Drop for EventRx {
    fn drop(&mut self) {
        let mut g = lock(&self.0);
        g.abandoned = true;
        g.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_arrive_in_order_then_none_once_the_sender_is_gone() {
        let (tx, mut rx) = channel();
        let t = std::thread::spawn(move || {
            for _ in 0..10 {
                tx.send(Out::Want).expect("receiver alive");
            }
        });
        let mut n = 0;
        while let Some(ev) = rx.recv().await {
            assert!(matches!(ev, Out::Want));
            n += 1;
        }
        t.join().expect("sender thread");
        assert_eq!(n, 10);
    }

    #[test]
    fn send_fails_once_the_receiver_is_gone() {
        let (tx, rx) = channel();
        assert!(tx.send(Out::Want).is_ok());
        drop(rx);
        assert!(tx.send(Out::Received).is_err());
    }
}
