//! What a watcher of a run receives: the current state first, then changes at most once per
//! `interval`, then the final state, which never waits for the interval.
//!
//! Changes are rate-limited from the last message sent, not delayed after each change: a change
//! that comes after a quiet spell goes out at once, and only changes that follow one another
//! closer than the interval are coalesced into one message.

use std::time::Duration;

use futures::Stream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::catalog::Catalog;
use crate::model::run::Run;

/// The stream of `first`, then what `receiver` publishes, rate-limited to one message per
/// `interval`, ending with the final state (read from the catalog when the run's task went away
/// before its watcher saw it).
pub(super) fn coalesced(
    first: Run,
    receiver: Option<watch::Receiver<Run>>,
    catalog: Catalog,
    interval: Duration,
) -> impl Stream<Item = Run> + Send + 'static {
    let now = Instant::now();
    futures::stream::unfold(
        (Some(first), receiver, false, now),
        move |(pending, mut receiver, done, last_sent)| {
            let catalog = catalog.clone();
            async move {
                if done {
                    return None;
                }
                if let Some(run) = pending {
                    let finished = run.state.is_final() || receiver.is_none();
                    return Some((run, (None, receiver, finished, Instant::now())));
                }
                let channel = receiver.as_mut()?;
                let next = match next_change(channel, last_sent + interval, |run: &Run| {
                    run.state.is_final()
                })
                .await
                {
                    Some(run) => run,
                    None => {
                        // The run ended and its task went away: the catalog has the final state.
                        let id = channel.borrow().id;
                        match catalog.get_run(id).await {
                            Ok(Some(run)) => run,
                            _ => channel.borrow().clone(),
                        }
                    }
                };
                let finished = next.state.is_final();
                Some((next, (None, receiver, finished, Instant::now())))
            }
        },
    )
}

/// The next value to send: waits for a change, then, unless it is final, lets further changes
/// pile up until `due`; a final value goes out the moment it is published. `None` when the
/// sender went away with nothing new.
async fn next_change<T: Clone>(
    channel: &mut watch::Receiver<T>,
    due: Instant,
    is_final: impl Fn(&T) -> bool,
) -> Option<T> {
    channel.changed().await.ok()?;
    loop {
        if is_final(&channel.borrow_and_update()) {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep_until(due) => break,
            changed = channel.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    Some(channel.borrow_and_update().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(1);
    const FINAL: u32 = 99;

    fn is_final(value: &u32) -> bool {
        *value == FINAL
    }

    /// A first change after a quiet spell goes out at once; the ones that follow within the
    /// interval are coalesced into one message at its end.
    #[tokio::test(start_paused = true)]
    async fn changes_are_rate_limited_from_the_last_message() {
        let (sender, mut receiver) = watch::channel(0u32);
        let sent = Instant::now() - INTERVAL;
        sender.send_replace(1);
        let started = Instant::now();
        assert_eq!(
            next_change(&mut receiver, sent + INTERVAL, is_final).await,
            Some(1)
        );
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "nothing sent lately: at once"
        );

        let sent = Instant::now();
        let publisher = tokio::spawn(async move {
            for value in 2..=4 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                sender.send_replace(value);
            }
            sender
        });
        assert_eq!(
            next_change(&mut receiver, sent + INTERVAL, is_final).await,
            Some(4)
        );
        assert_eq!(
            sent.elapsed(),
            INTERVAL,
            "coalesced until the interval ends"
        );
        drop(publisher.await);
    }

    /// The final value is never held back by the interval.
    #[tokio::test(start_paused = true)]
    async fn the_final_value_goes_out_at_once() {
        let (sender, mut receiver) = watch::channel(0u32);
        let sent = Instant::now();
        let publisher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            sender.send_replace(5);
            tokio::time::sleep(Duration::from_millis(50)).await;
            sender.send_replace(FINAL);
            sender
        });
        assert_eq!(
            next_change(&mut receiver, sent + INTERVAL, is_final).await,
            Some(FINAL)
        );
        assert_eq!(sent.elapsed(), Duration::from_millis(100));
        drop(publisher.await);
    }

    /// A sender that goes away ends the wait with what it last published, or with nothing.
    #[tokio::test(start_paused = true)]
    async fn a_sender_gone_ends_the_wait() {
        let (sender, mut receiver) = watch::channel(0u32);
        sender.send_replace(3);
        drop(sender);
        let sent = Instant::now();
        assert_eq!(
            next_change(&mut receiver, sent + INTERVAL, is_final).await,
            Some(3)
        );
        assert_eq!(sent.elapsed(), Duration::ZERO);
        assert_eq!(
            next_change(&mut receiver, sent + INTERVAL, is_final).await,
            None
        );
    }
}
