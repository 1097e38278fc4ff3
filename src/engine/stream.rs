//! [`TokenStream`]: the events of one request, readable blocking (an `Iterator`) or, with the
//! `async` feature, as a `futures::Stream` that needs no particular runtime.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;

use crate::error::{Error, Result};
use crate::generate::{CancelToken, Event, Summary};

#[derive(Default)]
struct State {
    items: VecDeque<Result<Event>>,
    sender_gone: bool,
    receiver_gone: bool,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Channel {
    state: Mutex<State>,
    ready: Condvar,
}

impl Channel {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code holding this lock can panic, so a poisoned lock still holds valid state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The worker's end of a request's event channel.
pub(crate) struct EventSender {
    chan: Arc<Channel>,
}

impl EventSender {
    /// Queues an event; `Err` when the stream was dropped (the request should stop).
    pub(crate) fn send(&self, item: Result<Event>) -> std::result::Result<(), ()> {
        let waker = {
            let mut st = self.chan.lock();
            if st.receiver_gone {
                return Err(());
            }
            st.items.push_back(item);
            st.waker.take()
        };
        self.chan.ready.notify_one();
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        let waker = {
            let mut st = self.chan.lock();
            st.sender_gone = true;
            st.waker.take()
        };
        self.chan.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A connected sender and stream.
pub(crate) fn channel(cancel: CancelToken) -> (EventSender, TokenStream) {
    let chan = Arc::new(Channel::default());
    (EventSender { chan: chan.clone() }, TokenStream { chan, cancel, finished: false })
}

/// The events of one request: tokens with their text, then a [`Event::Done`] summary.
/// Dropping the stream (or [`cancel`](TokenStream::cancel)) frees its sequence at the next step.
pub struct TokenStream {
    chan: Arc<Channel>,
    cancel: CancelToken,
    finished: bool,
}

impl TokenStream {
    /// Asks the engine to stop this request; the stream then ends with
    /// [`StopReason::Cancelled`](crate::StopReason::Cancelled).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Blocks until the request finishes; returns its whole text and summary.
    pub fn collect_text(self) -> Result<(String, Summary)> {
        crate::generate::collect_events(self)
    }
}

impl Iterator for TokenStream {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let mut st = self.chan.lock();
        loop {
            if let Some(item) = st.items.pop_front() {
                drop(st);
                return Some(self.mark(item));
            }
            if st.sender_gone {
                // The engine went away without finishing this request.
                self.finished = true;
                return Some(Err(Error::Cancelled));
            }
            st = self.chan.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl TokenStream {
    fn mark(&mut self, item: Result<Event>) -> Result<Event> {
        if matches!(item, Ok(Event::Done(_)) | Err(_)) {
            self.finished = true;
        }
        item
    }
}

/// A [`TokenStream`] as a `futures::Stream` (feature `async`): works on any executor, needs
/// no runtime. Made by [`TokenStream::into_async`].
#[cfg(feature = "async")]
pub struct AsyncTokenStream(TokenStream);

#[cfg(feature = "async")]
impl TokenStream {
    /// The same events as a `futures::Stream`.
    pub fn into_async(self) -> AsyncTokenStream {
        AsyncTokenStream(self)
    }
}

#[cfg(feature = "async")]
impl AsyncTokenStream {
    /// Asks the engine to stop this request.
    pub fn cancel(&self) {
        self.0.cancel();
    }
}

#[cfg(feature = "async")]
impl futures_core::Stream for AsyncTokenStream {
    type Item = Result<Event>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut self.get_mut().0;
        if this.finished {
            return Poll::Ready(None);
        }
        let mut st = this.chan.lock();
        if let Some(item) = st.items.pop_front() {
            drop(st);
            return Poll::Ready(Some(this.mark(item)));
        }
        if st.sender_gone {
            drop(st);
            this.finished = true;
            return Poll::Ready(Some(Err(Error::Cancelled)));
        }
        st.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        self.chan.lock().receiver_gone = true;
        if !self.finished {
            self.cancel.cancel();
        }
    }
}
