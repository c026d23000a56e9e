//! Coalescing: requests that arrive while earlier ones are being served are served together,
//! as one batch (one statement, one Redis call), and each caller gets its own answer back.
//! Under load batches grow by themselves; a lone request is served at once.

use std::{future::Future, sync::Arc};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

type Job<Req, Resp> = (Req, oneshot::Sender<Resp>);

/// One of the `in_flight` places a batch occupies while it is served. `serve` may drop it
/// before its answers are ready, when the rest of its work need not hold up the next batch.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

pub struct Coalescer<Req, Resp> {
    queue: mpsc::Sender<Job<Req, Resp>>,
}

impl<Req: Send + 'static, Resp: Send + 'static> Coalescer<Req, Resp> {
    /// Starts the task that forms batches of at most `max_batch` requests, with at most
    /// `in_flight` batches holding a [`Slot`] at once; `serve` answers a batch in its order.
    /// The task ends when the `Coalescer` is dropped.
    pub fn start<F, Fut>(max_batch: usize, in_flight: usize, serve: F) -> Self
    where
        F: Fn(Vec<Req>, Slot) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Resp>> + Send + 'static,
    {
        // Room for several full batches; beyond that, callers wait for room.
        let (queue, receiver) = mpsc::channel(max_batch * (in_flight + 1) * 2);
        tokio::spawn(form_batches(receiver, max_batch, in_flight, serve));
        Self { queue }
    }

    /// The answer to `request`, or `None` if the batching task has stopped.
    pub async fn submit(&self, request: Req) -> Option<Resp> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((request, reply)).await.ok()?;
        answer.await.ok()
    }
}

async fn form_batches<Req, Resp, F, Fut>(
    mut receiver: mpsc::Receiver<Job<Req, Resp>>,
    max_batch: usize,
    in_flight: usize,
    serve: F,
) where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Vec<Req>, Slot) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Resp>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = receiver.recv().await {
        // Waiting for a slot is what lets a batch grow: requests arrive meanwhile.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (requests, replies): (Vec<Req>, Vec<_>) = batch.into_iter().unzip();
        let answers = serve(requests, Slot { _permit: slot });
        tokio::spawn(async move {
            for (reply, answer) in replies.into_iter().zip(answers.await) {
                let _ = reply.send(answer);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn each_caller_gets_its_own_answer_and_concurrent_requests_share_batches() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let doubler = Arc::new(Coalescer::start(8, 1, move |numbers: Vec<u32>, _slot| {
            seen.lock().unwrap().push(numbers.len());
            async move {
                tokio::task::yield_now().await;
                numbers.into_iter().map(|n| n * 2).collect::<Vec<_>>()
            }
        }));
        let calls: Vec<_> = (0..100u32)
            .map(|n| {
                let doubler = doubler.clone();
                tokio::spawn(async move { (n, doubler.submit(n).await) })
            })
            .collect();
        for call in calls {
            let (n, answer) = call.await.unwrap();
            assert_eq!(answer, Some(n * 2));
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 100);
        assert!(sizes.iter().all(|&size| size <= 8));
        assert!(
            sizes.len() < 100,
            "some requests were batched together: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn a_batch_that_releases_its_slot_lets_the_next_one_start_before_it_answers() {
        let (finish_first, first_may_finish) = oneshot::channel::<()>();
        let first_may_finish = Arc::new(tokio::sync::Mutex::new(Some(first_may_finish)));
        let echo = Arc::new(Coalescer::start(1, 1, move |numbers: Vec<u32>, slot| {
            let first_may_finish = first_may_finish.clone();
            async move {
                drop(slot);
                if numbers == [1] {
                    let wait = first_may_finish.lock().await.take().unwrap();
                    wait.await.unwrap();
                }
                numbers
            }
        }));
        let first = tokio::spawn({
            let echo = echo.clone();
            async move { echo.submit(1).await }
        });
        tokio::task::yield_now().await;
        // With one slot, this answer comes only because the first batch released its slot.
        assert_eq!(echo.submit(2).await, Some(2));
        finish_first.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Some(1));
    }
}
