//! Which invokers may get work, learnt as the controller learns it (contract §7): from the pings
//! on `health` and from the completions on `completed<C>`.
//!
//! States, simplified from the controller's `InvokerSupervision`: `up` after an enabled ping;
//! `down` (offline) after a ping with `isEnabled: false` or 10 s without a ping; `unhealthy`
//! when more than 3 of the last 10 completions were system errors (it becomes `up` again with
//! the next successes). Unlike the controller this front door sends no test activation to a new
//! invoker: its first ping makes it `up`. Lower instances never seen are listed as `down`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use openwhisk::messages::{InvokerInstanceId, PingMessage};
use serde_json::{Map, Value};

/// A ping older than this makes the invoker `down`.
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Completions remembered per invoker.
const RING: usize = 10;
/// More system errors than this among the remembered completions make it `unhealthy`.
const MAX_SYSTEM_ERRORS: usize = 3;

/// An invoker's state as `/invokers` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Up,
    Unhealthy,
    Down,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Unhealthy => "unhealthy",
            Self::Down => "down",
        }
    }
}

#[derive(Debug)]
struct Entry {
    id: InvokerInstanceId,
    last_ping: Instant,
    enabled: bool,
    /// `true` for a system error, newest last.
    recent: VecDeque<bool>,
}

impl Entry {
    fn state(&self, now: Instant) -> State {
        if !self.enabled || now.duration_since(self.last_ping) > PING_TIMEOUT {
            State::Down
        } else if self.recent.iter().filter(|e| **e).count() > MAX_SYSTEM_ERRORS {
            State::Unhealthy
        } else {
            State::Up
        }
    }
}

/// The invokers seen so far.
#[derive(Debug, Default)]
pub struct Health {
    invokers: parking_lot::Mutex<BTreeMap<u32, Entry>>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, BTreeMap<u32, Entry>> {
        self.invokers.lock()
    }

    /// Records a ping from `health`.
    pub fn ping(&self, ping: &PingMessage) {
        let mut map = self.lock();
        let e = map.entry(ping.name.instance).or_insert_with(|| Entry {
            id: ping.name.clone(),
            last_ping: Instant::now(),
            enabled: true,
            recent: VecDeque::new(),
        });
        e.id = ping.name.clone();
        e.last_ping = Instant::now();
        e.enabled = ping.is_enabled.unwrap_or(true);
    }

    /// Records a completion from `completed<C>`.
    pub fn completion(&self, instance: u32, system_error: bool) {
        if let Some(e) = self.lock().get_mut(&instance) {
            e.recent.push_back(system_error);
            while e.recent.len() > RING {
                e.recent.pop_front();
            }
        }
    }

    /// The invokers that may get work, by instance.
    pub fn healthy(&self) -> Vec<u32> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(_, e)| e.state(now) == State::Up)
            .map(|(i, _)| *i)
            .collect()
    }

    /// How many known invokers are in each state.
    pub fn counts(&self) -> [(State, usize); 3] {
        let now = Instant::now();
        let map = self.lock();
        [State::Up, State::Unhealthy, State::Down]
            .map(|st| (st, map.values().filter(|e| e.state(now) == st).count()))
    }

    /// `GET /invokers`: `{"invoker0/0": "up", ...}`, unseen lower instances as `down`.
    pub fn to_json(&self) -> Value {
        let now = Instant::now();
        let map = self.lock();
        let mut out = Map::new();
        let top = map.keys().next_back().copied();
        for i in 0..=top.unwrap_or(0) {
            match map.get(&i) {
                Some(e) => out.insert(name(&e.id), Value::from(e.state(now).as_str())),
                None if top.is_some() => out.insert(format!("invoker{i}"), Value::from("down")),
                None => None,
            };
        }
        Value::Object(out)
    }
}

/// The controller's name of an invoker: `invoker<N>[/<uniqueName>][/<displayedName>]`.
pub fn name(id: &InvokerInstanceId) -> String {
    let mut parts = vec![format!("invoker{}", id.instance)];
    parts.extend(id.unique_name.iter().cloned());
    parts.extend(id.displayed_name.iter().cloned());
    parts.join("/")
}

/// The invoker an action goes to: a stable home among the healthy ones (so its warm containers
/// are found again), as the controller's sharding balancer hashes namespace and action.
pub fn home(healthy: &[u32], namespace: &str, action: &str) -> Option<u32> {
    if healthy.is_empty() {
        return None;
    }
    // FNV-1a: stable across processes and releases, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in namespace.bytes().chain([b'/']).chain(action.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let len = u64::try_from(healthy.len()).unwrap_or(1);
    healthy.get(usize::try_from(h % len).unwrap_or(0)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(i: u32, enabled: Option<bool>) -> PingMessage {
        PingMessage {
            name: InvokerInstanceId::new(i, 1 << 30, Some(i.to_string()), None),
            is_enabled: enabled,
        }
    }

    #[test]
    fn pings_make_invokers_up_and_disabled_ones_down() {
        let h = Health::new();
        assert_eq!(h.to_json(), serde_json::json!({}));
        h.ping(&ping(1, None));
        assert_eq!(
            h.to_json(),
            serde_json::json!({"invoker0": "down", "invoker1/1": "up"})
        );
        assert_eq!(h.healthy(), vec![1]);
        h.ping(&ping(1, Some(false)));
        assert!(h.healthy().is_empty());
        h.ping(&ping(1, Some(true)));
        assert_eq!(h.healthy(), vec![1]);
    }

    #[test]
    fn system_errors_make_an_invoker_unhealthy_until_successes_push_them_out() {
        let h = Health::new();
        h.ping(&ping(0, None));
        for _ in 0..4 {
            h.completion(0, true);
        }
        assert_eq!(h.to_json()["invoker0/0"], "unhealthy");
        for _ in 0..7 {
            h.completion(0, false);
        }
        assert_eq!(h.to_json()["invoker0/0"], "up");
    }

    #[test]
    fn an_action_has_a_stable_home() {
        let healthy = [0, 1, 2];
        let a = home(&healthy, "guest", "hello");
        assert_eq!(a, home(&healthy, "guest", "hello"));
        assert!(a.is_some());
        assert_eq!(home(&[], "guest", "hello"), None);
        let spread: std::collections::BTreeSet<_> = (0..50)
            .filter_map(|i| home(&healthy, "guest", &format!("a{i}")))
            .collect();
        assert_eq!(spread.len(), 3, "50 actions use every invoker");
    }
}
