//! The key space: string values under byte-string keys, each with an optional
//! deadline, and the count of the bytes they hold.
//!
//! It owns the keys, values and deadlines and keeps `used` exact by its own estimate
//! of what each entry costs. It never refuses anything: whether a write fits under
//! `maxmemory` is the caller's question ([`Store::growth`] answers how much a write
//! would add). It never reads a clock either: every call that may find a key expired
//! is given `now`, in milliseconds of the caller's clock. An expired key is missing to
//! every read from its deadline on, and gone once a write or a removal meets it (lazy
//! expiry) or [`Store::sweep`] collects it; until then its bytes count in `used`. Reads
//! take `&self` so that one hash of the key finds the entry and its deadline: removing
//! what a read finds expired would hash it again, on every read.

use std::collections::{BTreeSet, HashMap};

/// What an entry costs beyond its key and value bytes: its slot in the hash table at
/// its emptiest (the table doubles when 7/8 full, so right after a resize a slot of
/// 41 bytes on wasm32 is half-used, and the old table lives on during the move), and
/// the allocator's header and rounding for the key and the value. An estimate, on the
/// high side, so that `maxmemory` bounds what the instance's linear memory holds.
const ENTRY_OVERHEAD: usize = 96;

/// What a deadline costs beyond its copy of the key: its share of a B-tree node and
/// the allocator's rounding.
const DEADLINE_OVERHEAD: usize = 48;

/// A value and when it expires.
struct Entry {
    value: Vec<u8>,
    /// Milliseconds of the caller's clock; `None`: never.
    deadline: Option<u64>,
}

/// Every key of one key space.
#[derive(Default)]
pub struct Store {
    entries: HashMap<Vec<u8>, Entry>,
    /// The keys that have a deadline, soonest first: what the sweep walks.
    deadlines: BTreeSet<(u64, Vec<u8>)>,
    /// Bytes held, by [`cost`].
    used: usize,
}

impl Store {
    /// The value of `key`, unless it is missing or expired.
    pub fn get(&self, key: &[u8], now: u64) -> Option<&[u8]> {
        self.live(key, now).map(|entry| entry.value.as_slice())
    }

    /// Whether `key` holds a value that has not expired.
    pub fn contains(&self, key: &[u8], now: u64) -> bool {
        self.live(key, now).is_some()
    }

    /// The deadline of `key`: `None` when it is missing, `Some(None)` when it never
    /// expires.
    pub fn deadline(&self, key: &[u8], now: u64) -> Option<Option<u64>> {
        self.live(key, now).map(|entry| entry.deadline)
    }

    /// Store `value` under `key` with `deadline`, replacing any value and deadline.
    pub fn set(&mut self, key: &[u8], value: &[u8], deadline: Option<u64>) {
        // Overwriting in place (the common case of a cache) spares a copy of the key
        // and, for a value of about the same size, its allocation.
        if let Some(entry) = self.entries.get_mut(key) {
            let old = cost(key.len(), entry.value.len(), entry.deadline.is_some());
            if entry.deadline != deadline {
                if let Some(at) = entry.deadline {
                    self.deadlines.remove(&(at, key.to_vec()));
                }
                if let Some(at) = deadline {
                    self.deadlines.insert((at, key.to_vec()));
                }
                entry.deadline = deadline;
            }
            replace(&mut entry.value, value);
            self.used = self.used - old + cost(key.len(), value.len(), deadline.is_some());
            return;
        }
        self.used += cost(key.len(), value.len(), deadline.is_some());
        if let Some(at) = deadline {
            self.deadlines.insert((at, key.to_vec()));
        }
        self.entries.insert(key.to_vec(), Entry { value: value.to_vec(), deadline });
    }

    /// The value of `key` and its deadline, unless it is missing or expired.
    pub fn get_with_deadline(&self, key: &[u8], now: u64) -> Option<(&[u8], Option<u64>)> {
        self.live(key, now).map(|entry| (entry.value.as_slice(), entry.deadline))
    }

    /// Give `key` a new deadline; false when it is missing.
    pub fn expire_at(&mut self, key: &[u8], deadline: u64, now: u64) -> bool {
        self.expire_if_due(key, now);
        let Some(entry) = self.entries.get_mut(key) else { return false };
        let old_cost = cost(key.len(), entry.value.len(), entry.deadline.is_some());
        if let Some(old) = entry.deadline.replace(deadline) {
            self.deadlines.remove(&(old, key.to_vec()));
        }
        self.deadlines.insert((deadline, key.to_vec()));
        self.used = self.used - old_cost + cost(key.len(), entry.value.len(), true);
        true
    }

    /// Remove `key`; true when it held a value that had not expired.
    pub fn remove(&mut self, key: &[u8], now: u64) -> bool {
        self.expire_if_due(key, now);
        self.remove_entry(key)
    }

    /// How many bytes storing `value_len` bytes under `key` (with a deadline or not)
    /// would add to [`used`](Store::used); 0 when it would free some.
    pub fn growth(&self, key: &[u8], value_len: usize, with_deadline: bool) -> usize {
        let old = self.entries.get(key).map_or(0, |entry| cost(key.len(), entry.value.len(), entry.deadline.is_some()));
        cost(key.len(), value_len, with_deadline).saturating_sub(old)
    }

    /// Keys held, counting expired ones not collected yet (as Redis's DBSIZE does).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes held, by the store's estimate.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Whether any key has a deadline: whether a sweep has anything to look for.
    pub fn has_deadlines(&self) -> bool {
        !self.deadlines.is_empty()
    }

    /// Remove every key.
    pub fn clear(&mut self) {
        *self = Store::default();
    }

    /// Remove up to `budget` keys whose deadline has passed, soonest first; returns how
    /// many it removed (`budget` means there may be more).
    pub fn sweep(&mut self, now: u64, budget: usize) -> usize {
        let mut removed = 0;
        while removed < budget {
            let Some((at, key)) = self.deadlines.first() else { break };
            if *at > now {
                break;
            }
            let key = key.clone();
            self.remove_entry(&key);
            removed += 1;
        }
        removed
    }

    /// The entry of `key`, unless it is missing or expired.
    fn live(&self, key: &[u8], now: u64) -> Option<&Entry> {
        self.entries.get(key).filter(|entry| entry.deadline.is_none_or(|at| at > now))
    }

    fn expire_if_due(&mut self, key: &[u8], now: u64) {
        let due = self.entries.get(key).and_then(|entry| entry.deadline).is_some_and(|at| at <= now);
        if due {
            self.remove_entry(key);
        }
    }

    fn remove_entry(&mut self, key: &[u8]) -> bool {
        let Some(entry) = self.entries.remove(key) else { return false };
        if let Some(at) = entry.deadline {
            self.deadlines.remove(&(at, key.to_vec()));
        }
        self.used -= cost(key.len(), entry.value.len(), entry.deadline.is_some());
        true
    }
}

/// The first byte of a key space handed over to the next version: the layout of what
/// follows, the number of keys (4 bytes little-endian, so the next version sizes its
/// table once rather than growing it key by key), then one record per key: the key's
/// length (4 bytes little-endian) and bytes, the value's likewise, then the milliseconds
/// it has left plus one (8 bytes; 0: no deadline). Time left, not the deadline: each
/// instance's clock starts at its own first look.
const HANDED_V1: u8 = 1;

impl Store {
    /// Every key that has not expired at `now`, as the next version's
    /// [`Store::taken_over`] reads it.
    pub fn handed_over(&self, now: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.used / 2);
        out.push(HANDED_V1);
        out.extend_from_slice(&0u32.to_le_bytes());
        let mut keys: u32 = 0;
        for (key, entry) in &self.entries {
            let left = match entry.deadline {
                None => 0,
                Some(at) if at <= now => continue,
                Some(at) => at - now + 1,
            };
            for bytes in [key.as_slice(), entry.value.as_slice()] {
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(bytes);
            }
            out.extend_from_slice(&left.to_le_bytes());
            keys += 1;
        }
        out[1..5].copy_from_slice(&keys.to_le_bytes());
        out
    }

    /// The key space [`Store::handed_over`] wrote, with deadlines from `now`; `None`
    /// when the bytes are not one.
    pub fn taken_over(state: &[u8], now: u64) -> Option<Store> {
        let (&HANDED_V1, rest) = state.split_first()? else { return None };
        let (keys, mut rest) = rest.split_first_chunk::<4>()?;
        let mut store = Store::default();
        // At most one key per 16 bytes: a count the bytes cannot hold reserves no more.
        store.entries.reserve((u32::from_le_bytes(*keys) as usize).min(rest.len() / 16));
        while !rest.is_empty() {
            let (key, tail) = length_prefixed(rest)?;
            let (value, tail) = length_prefixed(tail)?;
            let (left, tail) = tail.split_first_chunk::<8>()?;
            rest = tail;
            let deadline = match u64::from_le_bytes(*left) {
                0 => None,
                left => Some(now.saturating_add(left - 1)),
            };
            store.set(key, value, deadline);
        }
        Some(store)
    }
}

/// Bytes behind a 4-byte little-endian length at the start of `bytes`, and what follows.
fn length_prefixed(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, tail) = bytes.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    (len <= tail.len()).then(|| tail.split_at(len))
}

/// Put `new` in `value`, in the allocation it has when that fits without slack the
/// count would miss (it counts lengths, not capacities).
fn replace(value: &mut Vec<u8>, new: &[u8]) {
    let capacity = value.capacity();
    if capacity >= new.len() && capacity - new.len() <= new.len() / 8 + 16 {
        value.clear();
        value.extend_from_slice(new);
    } else {
        *value = new.to_vec();
    }
}

/// What an entry is counted as.
fn cost(key_len: usize, value_len: usize, with_deadline: bool) -> usize {
    let deadline = if with_deadline { key_len + DEADLINE_OVERHEAD } else { 0 };
    key_len + value_len + ENTRY_OVERHEAD + deadline
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expired_key_is_missing_when_seen_and_its_bytes_go_when_it_is_met_or_swept() {
        let mut store = Store::default();
        store.set(b"k", b"v", Some(100));
        store.set(b"other", b"v", Some(100));
        store.set(b"forever", b"v", None);
        assert_eq!(store.get(b"k", 99), Some(&b"v"[..]));
        assert_eq!(store.deadline(b"k", 99), Some(Some(100)));
        assert_eq!(store.get(b"k", 100), None);
        assert!(!store.contains(b"other", 100));
        assert_eq!(store.get_with_deadline(b"k", 100), None);
        assert_eq!(store.deadline(b"forever", 100), Some(None));
        assert!(!store.remove(b"k", 100));
        assert!(!store.expire_at(b"other", 500, 100));
        assert_eq!((store.len(), store.used()), (1, cost(7, 1, false)));
        assert!(!store.has_deadlines());
        store.set(b"k", b"v", Some(100));
        assert_eq!(store.sweep(100, 10), 1);
        assert_eq!((store.len(), store.used()), (1, cost(7, 1, false)));
    }

    #[test]
    fn the_sweep_takes_only_what_is_due_within_its_budget() {
        let mut store = Store::default();
        for i in 0..5u64 {
            store.set(format!("k{i}").as_bytes(), &[0; 10], Some(10 + i));
        }
        assert_eq!(store.sweep(12, 2), 2);
        assert_eq!(store.sweep(12, 100), 1);
        assert_eq!(store.len(), 2);
        assert_eq!(store.sweep(1000, 100), 2);
        assert_eq!((store.len(), store.used()), (0, 0));
    }

    #[test]
    fn a_handed_over_key_space_is_taken_over_whole() {
        let mut store = Store::default();
        store.set(b"forever", b"1", None);
        store.set(b"soon", b"22", Some(150));
        store.set(b"gone", b"333", Some(90));
        let state = store.handed_over(100);
        let taken = Store::taken_over(&state, 1000).unwrap();
        assert_eq!(taken.len(), 2);
        assert_eq!(taken.get(b"forever", 1000), Some(&b"1"[..]));
        assert_eq!(taken.deadline(b"soon", 1000), Some(Some(1050)));
        assert_eq!(taken.get(b"gone", 1000), None);
        assert_eq!(taken.used(), cost(7, 1, false) + cost(4, 2, true));
        assert!(Store::taken_over(&state[..state.len() - 1], 0).is_none());
        assert!(Store::taken_over(b"", 0).is_none());
        assert_eq!(Store::taken_over(&[HANDED_V1, 0, 0, 0, 0], 0).map(|s| s.len()), Some(0));
        assert!(Store::taken_over(&[HANDED_V1], 0).is_none());
    }

    #[test]
    fn growth_counts_only_what_a_write_adds() {
        let mut store = Store::default();
        assert_eq!(store.growth(b"k", 10, false), cost(1, 10, false));
        store.set(b"k", &[0; 10], None);
        assert_eq!(store.growth(b"k", 4, false), 0);
        assert_eq!(store.growth(b"k", 12, false), 2);
        assert!(store.expire_at(b"k", 50, 0));
        store.set(b"k", &[1; 3], Some(50));
        assert_eq!(store.get_with_deadline(b"k", 0), Some((&[1u8; 3][..], Some(50))));
        assert_eq!(store.used(), cost(1, 3, true));
        store.set(b"k", &[2; 1000], None);
        assert_eq!((store.used(), store.has_deadlines()), (cost(1, 1000, false), false));
        assert!(store.remove(b"k", 0));
        assert_eq!(store.used(), 0);
    }
}
