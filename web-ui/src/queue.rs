//! The worker's request queue: requests are answered one at a time, in the order they arrive,
//! so a second request sent while one runs waits its turn instead of replacing it. `Stop` acts
//! at once: on the running generation (ends after the current token) or on a queued request
//! (dropped, answered `aborted`). A `Load` ends the running generation: its reply belongs to the
//! model being replaced.

use std::collections::VecDeque;

use crate::protocol::ToWorker;

/// What a `Stop` asks of the worker.
#[derive(Debug, PartialEq, Eq)]
pub enum StopAction {
    /// End the running generation after its current step.
    StopRunning,
    /// This queued request was removed: answer it with an `aborted` error.
    Dropped(u64),
    /// Nothing to stop (finished already, or an unknown id).
    Nothing,
}

/// Requests waiting and the one being answered.
#[derive(Debug, Default)]
pub struct RequestQueue {
    queued: VecDeque<(u64, ToWorker)>,
    /// Id of the request being answered, and whether it is a generation.
    running: Option<(u64, bool)>,
}

impl RequestQueue {
    /// Queue a request. Returns true when the running generation should end now (a `Load`
    /// arrived). `Stop` and `LoseGpu` are not queued: see [`RequestQueue::stop`].
    pub fn push(&mut self, id: u64, msg: ToWorker) -> bool {
        let ends_generation = matches!(msg, ToWorker::Load { .. }) && self.generating();
        self.queued.push_back((id, msg));
        ends_generation
    }

    /// A `Stop` for `request` (`None`: whatever generation runs).
    pub fn stop(&mut self, request: Option<u64>) -> StopAction {
        match request {
            None if self.generating() => StopAction::StopRunning,
            None => StopAction::Nothing,
            Some(id) if self.running.is_some_and(|(r, g)| r == id && g) => StopAction::StopRunning,
            Some(id) => match self.queued.iter().position(|(r, _)| *r == id) {
                Some(i) => {
                    self.queued.remove(i);
                    StopAction::Dropped(id)
                }
                None => StopAction::Nothing,
            },
        }
    }

    /// The next request to answer, now marked running; `None` when the queue is empty or a
    /// request is still running.
    pub fn next(&mut self) -> Option<(u64, ToWorker)> {
        if self.running.is_some() {
            return None;
        }
        let (id, msg) = self.queued.pop_front()?;
        self.running = Some((id, matches!(msg, ToWorker::Generate { .. })));
        Some((id, msg))
    }

    /// The running request was answered.
    pub fn finish(&mut self) {
        self.running = None;
    }

    /// Id of the request being answered.
    pub fn running(&self) -> Option<u64> {
        self.running.map(|(id, _)| id)
    }

    /// Whether a request is being answered.
    pub fn busy(&self) -> bool {
        self.running.is_some()
    }

    fn generating(&self) -> bool {
        self.running.is_some_and(|(_, g)| g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Envelope, FromWorker, GenSettings, ReplyStats};

    fn gen() -> ToWorker {
        ToWorker::Generate {
            turns: Vec::new(),
            settings: GenSettings::default(),
        }
    }

    fn load() -> ToWorker {
        ToWorker::Load {
            model_id: "m".into(),
            backend: "auto".into(),
            n_ctx: 2048,
            template_fallback: false,
        }
    }

    #[test]
    fn requests_are_answered_in_order_one_at_a_time() {
        let mut q = RequestQueue::default();
        assert!(!q.push(1, load()));
        assert!(!q.push(2, gen()));
        assert_eq!(q.next().map(|r| r.0), Some(1));
        assert!(q.next().is_none(), "the load still runs");
        q.finish();
        assert_eq!(q.next().map(|r| r.0), Some(2));
        assert_eq!(q.running(), Some(2));
        q.finish();
        assert!(q.next().is_none() && !q.busy());
    }

    #[test]
    fn a_load_ends_the_running_generation_and_waits_for_it() {
        let mut q = RequestQueue::default();
        q.push(1, gen());
        q.next();
        assert!(q.push(2, load()), "the reply of the replaced model ends");
        assert!(
            q.next().is_none(),
            "the load waits until the generation has answered"
        );
        q.finish();
        assert_eq!(q.next().map(|r| r.0), Some(2));
        assert!(!q.push(3, load()), "a load does not end a load");
    }

    #[test]
    fn stop_ends_the_running_generation_or_drops_a_queued_request() {
        let mut q = RequestQueue::default();
        assert_eq!(q.stop(None), StopAction::Nothing);
        q.push(1, gen());
        q.push(2, gen());
        q.push(3, gen());
        q.next();
        assert_eq!(q.stop(Some(2)), StopAction::Dropped(2));
        assert_eq!(q.stop(Some(2)), StopAction::Nothing, "answered once");
        assert_eq!(q.stop(Some(1)), StopAction::StopRunning);
        assert_eq!(q.stop(None), StopAction::StopRunning);
        assert_eq!(q.stop(Some(9)), StopAction::Nothing);
        q.finish();
        assert_eq!(q.next().map(|r| r.0), Some(3));
    }

    #[test]
    fn stop_does_not_touch_a_running_load() {
        let mut q = RequestQueue::default();
        q.push(1, load());
        q.next();
        assert_eq!(q.stop(None), StopAction::Nothing);
        assert_eq!(q.stop(Some(1)), StopAction::Nothing);
    }

    #[test]
    fn envelopes_round_trip_with_their_ids() {
        let m = Envelope {
            id: 7,
            msg: ToWorker::Stop { request: Some(3) },
        };
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, r#"{"id":7,"msg":{"type":"stop","request":3}}"#);
        let back: Envelope<ToWorker> =
            serde_json::from_str(r#"{"id":8,"msg":{"type":"stop"}}"#).unwrap();
        assert!(matches!(back.msg, ToWorker::Stop { request: None }));
        let done = Envelope {
            id: 9,
            msg: FromWorker::Done(ReplyStats::default()),
        };
        let j = serde_json::to_string(&done).unwrap();
        let back: Envelope<FromWorker> = serde_json::from_str(&j).unwrap();
        assert_eq!(back.id, 9);
        assert!(back.msg.is_final());
        assert!(!FromWorker::Token { text: "a".into() }.is_final());
    }
}
