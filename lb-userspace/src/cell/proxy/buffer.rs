//! `buffering = true` (nginx's `proxy_buffering`): a task reads the upstream's response body
//! ahead of the client, holding up to a limit, so the upstream connection goes back to the
//! pool as soon as the upstream is done, however slowly the client reads.
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;

/// The frames read and not yet sent, and how the upstream body ended.
#[derive(Default)]
struct Held {
    frames: VecDeque<Frame<Bytes>>,
    bytes: u64,
    /// Some once the upstream body ended: Ok at its end, Err with why it failed.
    end: Option<Result<(), String>>,
    /// The client side, waiting for a frame.
    reader: Option<Waker>,
    /// The read-ahead task, waiting for room.
    writer: Option<Waker>,
}

/// The client side of a read-ahead body. Dropping it (the client went away) stops the task and
/// closes the upstream connection unless the body was already read to its end.
pub struct ReadAhead {
    held: Rc<RefCell<Held>>,
    task: tokio::task::JoinHandle<()>,
    size: SizeHint,
}

impl ReadAhead {
    /// Starts reading `body`: at most `limit` bytes are held (past it, reading waits for the
    /// client), each read waits at most `timeout`, and `on_end` runs when the body ended.
    pub fn start<B>(body: B, limit: u64, timeout: Duration, on_end: Box<dyn FnOnce()>) -> Self
    where
        B: http_body::Body<Data = Bytes> + Unpin + 'static,
        B::Error: std::fmt::Display,
    {
        let size = body.size_hint();
        let held = Rc::new(RefCell::new(Held::default()));
        let task = tokio::task::spawn_local(fill(body, held.clone(), limit, timeout, on_end));
        ReadAhead { held, task, size }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let mut h = self.held.borrow_mut();
        if let Some(f) = h.frames.pop_front() {
            if let Some(d) = f.data_ref() {
                h.bytes -= d.len() as u64;
            }
            if let Some(w) = h.writer.take() {
                w.wake();
            }
            return Poll::Ready(Some(Ok(f)));
        }
        match &h.end {
            Some(Ok(())) => Poll::Ready(None),
            Some(Err(why)) => Poll::Ready(Some(Err(std::io::Error::other(why.clone())))),
            None => {
                h.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        let h = self.held.borrow();
        h.frames.is_empty() && matches!(h.end, Some(Ok(())))
    }

    pub fn size_hint(&self) -> SizeHint {
        self.size
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fill<B>(
    mut body: B,
    held: Rc<RefCell<Held>>,
    limit: u64,
    timeout: Duration,
    on_end: Box<dyn FnOnce()>,
) where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let end = loop {
        std::future::poll_fn(|cx| {
            let mut h = held.borrow_mut();
            if h.bytes < limit {
                Poll::Ready(())
            } else {
                h.writer = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        match tokio::time::timeout(timeout, body.frame()).await {
            Err(_) => {
                tracing::warn!("upstream response body: nothing for {timeout:?} (read_timeout)");
                break Err("upstream read timeout".to_string());
            }
            Ok(None) => {
                // Read to its end: the connection can serve another request now.
                on_end();
                break Ok(());
            }
            Ok(Some(Err(e))) => {
                tracing::warn!("upstream response body: {e}; closing the connection");
                break Err(e.to_string());
            }
            Ok(Some(Ok(frame))) => {
                let mut h = held.borrow_mut();
                if let Some(d) = frame.data_ref() {
                    h.bytes += d.len() as u64;
                }
                h.frames.push_back(frame);
                if let Some(w) = h.reader.take() {
                    w.wake();
                }
            }
        }
    };
    let mut h = held.borrow_mut();
    h.end = Some(end);
    if let Some(w) = h.reader.take() {
        w.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::convert::Infallible;

    use tokio::sync::mpsc;

    /// A body fed by the test, one frame at a time.
    struct Chan(mpsc::Receiver<Frame<Bytes>>);

    impl http_body::Body for Chan {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0.poll_recv(cx).map(|f| f.map(Ok))
        }
    }

    fn body(cap: usize) -> (mpsc::Sender<Frame<Bytes>>, Chan) {
        let (tx, rx) = mpsc::channel(cap);
        (tx, Chan(rx))
    }

    async fn next(r: &mut ReadAhead) -> Option<Result<Frame<Bytes>, std::io::Error>> {
        std::future::poll_fn(|cx| r.poll_frame(cx)).await
    }

    fn run(f: impl Future<Output = ()>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f);
    }

    #[test]
    fn reads_ahead_up_to_the_limit_then_waits_for_the_client() {
        run(async {
            let (tx, b) = body(1);
            let ended = Rc::new(Cell::new(false));
            let e = ended.clone();
            let mut r =
                ReadAhead::start(b, 10, Duration::from_secs(5), Box::new(move || e.set(true)));
            // 4 bytes a frame: the task takes frames while it holds under 10 bytes (3 frames),
            // then the channel's one slot fills and a further send must wait.
            for _ in 0..4 {
                tx.send(Frame::data(Bytes::from_static(b"abcd")))
                    .await
                    .unwrap();
            }
            assert!(
                tx.try_send(Frame::data(Bytes::from_static(b"abcd")))
                    .is_err()
            );
            assert_eq!(r.held.borrow().bytes, 12);
            // The client takes one frame: room again, and the task reads on.
            let f = next(&mut r).await.unwrap().unwrap();
            assert_eq!(f.data_ref().unwrap().as_ref(), b"abcd");
            tx.send(Frame::data(Bytes::from_static(b"abcd")))
                .await
                .unwrap();
            drop(tx);
            let mut got = 4;
            while let Some(f) = next(&mut r).await {
                got += f.unwrap().into_data().unwrap().len();
            }
            assert_eq!(got, 20);
            assert!(ended.get(), "on_end ran at the body's end");
            assert!(r.is_end_stream());
        });
    }

    #[test]
    fn the_upstream_is_free_before_the_client_reads() {
        run(async {
            let (tx, b) = body(8);
            let ended = Rc::new(Cell::new(false));
            let e = ended.clone();
            let mut r = ReadAhead::start(
                b,
                1 << 20,
                Duration::from_secs(5),
                Box::new(move || e.set(true)),
            );
            tx.send(Frame::data(Bytes::from_static(b"all of it")))
                .await
                .unwrap();
            drop(tx);
            // Without the client reading a byte, the body is read to its end.
            let e = ended.clone();
            std::future::poll_fn(|cx| {
                if e.get() {
                    Poll::Ready(())
                } else {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            })
            .await;
            let f = next(&mut r).await.unwrap().unwrap();
            assert_eq!(f.into_data().unwrap().as_ref(), b"all of it");
            assert!(next(&mut r).await.is_none());
        });
    }

    #[test]
    fn a_client_that_goes_away_stops_the_reading() {
        run(async {
            let (tx, b) = body(1);
            let ended = Rc::new(Cell::new(false));
            let e = ended.clone();
            let r = ReadAhead::start(
                b,
                1 << 20,
                Duration::from_secs(5),
                Box::new(move || e.set(true)),
            );
            tx.send(Frame::data(Bytes::from_static(b"x")))
                .await
                .unwrap();
            drop(r);
            // The task is gone, so the body it read from is dropped: the sender sees it closed.
            tx.closed().await;
            assert!(!ended.get(), "the connection is not given back mid-body");
        });
    }

    #[test]
    fn silence_past_the_timeout_fails_the_body() {
        run(async {
            let (_tx, b) = body(1);
            let mut r = ReadAhead::start(b, 1 << 20, Duration::from_millis(20), Box::new(|| ()));
            let e = next(&mut r).await.unwrap().unwrap_err();
            assert!(e.to_string().contains("timeout"), "{e}");
        });
    }
}
